#!/usr/bin/env bash
# Remove each barrier and proxy fence of the decode kernels in turn and run the emulator tests that
# should notice (the shared-memory checks in reverse and shuffled thread order, the stage and split
# tests); print which removals no test caught. The kernels are copied into a temporary git
# worktree at HEAD, so the checkout is never touched. Slow: about a minute per removal on 2 cores.
#
#   scripts/emu-mutations.sh            # every call site
#   scripts/emu-mutations.sh 704 711    # only these lines of cuda_impl/kernels/decode.cu
set -euo pipefail
root=$(git rev-parse --show-toplevel)
src=cuda_impl/kernels/decode.cu
work=$(mktemp -d)
git -C "$root" worktree add -q --detach "$work" HEAD
trap 'git -C "$root" worktree remove --force "$work"' EXIT
export CARGO_TARGET_DIR="$root/target/mutations"

if [ $# -gt 0 ]; then
    lines=("$@")
else
    # Call sites (a line that is only the call, maybe under `if constexpr (WG)`), outside the
    # mma/wgmma probes, which the probe tests check on their own.
    mapfile -t lines < <(awk '
        /^struct ProbeParams/ { probe = 1 }
        /^\/\/ x reduced/ { probe = 0 }
        !probe && /^[ \t]*(if constexpr \(WG\) )?(__syncthreads|fence_proxy_async)\(\);/ { print NR }
    ' "$work/$src")
fi

orig="$work/.decode.cu.orig"
cp "$work/$src" "$orig"
missed=0
for n in "${lines[@]}"; do
    cp "$orig" "$work/$src"
    text=$(sed -n "${n}p" "$work/$src" | sed 's/^[ \t]*//')
    sed -i "${n}s|^|// removed: |" "$work/$src"
    if (cd "$work" && cargo test -q -p gqla-cuda --test emu -- \
        kernels_pass_the_shared_memory_checks stage_counts_agree split_counts_agree >/dev/null 2>&1); then
        echo "line $n ($text): NOT caught"
        missed=$((missed + 1))
    else
        echo "line $n ($text): caught"
    fi
done
echo "${#lines[@]} removals, $missed not caught"
