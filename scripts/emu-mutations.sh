#!/usr/bin/env bash
# Remove each barrier and proxy fence of the decode kernels in turn and run the emulator tests that
# should notice (the shared-memory checks in reverse and shuffled thread order, the stage and split
# tests); print which removals no test caught. The kernels are copied into a temporary git
# worktree at HEAD, so the checkout is never touched. Slow: about a minute per removal on 2 cores.
#
#   scripts/emu-mutations.sh                              # every call site
#   scripts/emu-mutations.sh attn_tc.cu:120 attn_tc.cu:131  # only these lines of cuda_impl/kernels/
set -euo pipefail
root=$(git rev-parse --show-toplevel)
kernels=cuda_impl/kernels
work=$(mktemp -d)
git -C "$root" worktree add -q --detach "$work" HEAD
trap 'git -C "$root" worktree remove --force "$work"' EXIT
export CARGO_TARGET_DIR="$root/target/mutations"

if [ $# -gt 0 ]; then
    sites=("$@")
else
    # Call sites (a line that is only the call, maybe under `if constexpr (WG)`), outside the
    # mma/wgmma probes (probes.cu), which the probe tests check on their own.
    mapfile -t sites < <(cd "$work/$kernels" && for f in *.cu *.cuh; do
        [ "$f" = probes.cu ] && continue
        awk -v f="$f" '/^[ \t]*(if constexpr \(WG\) )?(__syncthreads|fence_proxy_async)\(\);/ { print f ":" NR }' "$f"
    done)
fi

missed=0
for site in "${sites[@]}"; do
    file="$work/$kernels/${site%%:*}"
    n=${site##*:}
    cp "$file" "$file.orig"
    text=$(sed -n "${n}p" "$file" | sed 's/^[ \t]*//')
    sed -i "${n}s|^|// removed: |" "$file"
    if (cd "$work" && cargo test -q -p gqla-cuda --test emu -- \
        kernels_pass_the_shared_memory_checks stage_counts_agree split_counts_agree >/dev/null 2>&1); then
        echo "$site ($text): NOT caught"
        missed=$((missed + 1))
    else
        echo "$site ($text): caught"
    fi
    mv "$file.orig" "$file"
done
echo "${#sites[@]} removals, $missed not caught"
