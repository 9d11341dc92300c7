#!/usr/bin/env bash
# The whole GPU round for the CUDA kernels (issue 5).
#
#   scripts/gpu-round.sh pack                 # here: build release binaries, pack what travels
#   then device calls (each under 10 minutes, back to back so the machine stays warm), carrying
#   target/gpu-round:
#   bash scripts/gpu-round.sh remote [STAGES] # there: STAGES of tests,certify,sanitize,ptxas,ncu,bench,peer,external
#   in this order (most needed first; a session has 15 device minutes): `remote tests,certify`,
#   `remote bench,peer`, `remote sanitize,ptxas`, `remote external,ncu`.
#
# `pack` builds the `gqla` release binary and a nextest archive of the gqla-cuda tests, and copies
# cargo-nextest beside them (the GPU machine has no Rust toolchain). `remote` writes everything
# under $OUT/round/ and packs it as $OUT/round.tgz (the device tool returns at most 8 files), with
# $OUT/summary.md beside it. Every step runs under a time limit cut from what is left of the call
# (GQLA_ROUND_BUDGET_S, 570 s unless set, of the device tool's 600), so a hung kernel costs one
# step, not the round: its log ends with "timed out", and the summary and archive are still written.
set -euo pipefail
cd "$(dirname "$0")/.."
pack_dir=target/gpu-round

# Representative cases for compute-sanitizer: every op and layout, paged and contiguous, split
# KV with empty splits, padding rows, and each dtype, at small contexts.
sanitize_filters=(
    "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=65,31;page=64;dtype=bf16;seed="
    "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=0,17,pad,1,130;page=64;dtype=bf16;splits=16"
    "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=2;ctx=65,130,3;page=none"
    "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=per_group;sq=2;ctx=0,65,pad,4097;page=16"
    "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=2;ctx=65,31;page=64;dtype=f32"
    "gqa.decode:h=32;g=8;d=128;dv=128;sq=2;ctx=65,130,3;page=1;"
    "gqa.decode:h=32;g=8;d=128;dv=128;sq=2;ctx=65,31;page=64;dtype=f16"
    "gqla.cache.expand:g=8;dc=512;dn=128;dv=128;ctx=65,130,3;page=16"
)

pack() {
    mkdir -p "$pack_dir"
    cargo build --release --bin gqla
    cargo nextest archive --release -p gqla-cuda --archive-file "$pack_dir/cuda-tests.tar.zst"
    cp target/release/gqla "$pack_dir/gqla"
    cp "$(command -v cargo-nextest)" "$pack_dir/cargo-nextest"
    strip "$pack_dir/gqla" "$pack_dir/cargo-nextest" 2>/dev/null || true
    du -sh "$pack_dir"/*
    echo "carry: $pack_dir (64 MiB at most in all)"
}

round_start=$SECONDS
round_budget=${GQLA_ROUND_BUDGET_S:-570}

# limited CAP LOG CMD...: run CMD with its output appended to LOG, for at most CAP seconds and never
# past the round's budget (20 s are kept for the summary). timeout signals the whole process group,
# so a sanitizer's target goes too.
limited() {
    local cap=$1 log=$2
    shift 2
    local left=$((round_budget - (SECONDS - round_start) - 20))
    ((left < cap)) && cap=$left
    if ((cap < 10)); then
        echo "skipped: no time left in this call" >>"$log"
        return 1
    fi
    local rc=0
    timeout --kill-after=10 "$cap" "$@" >>"$log" 2>&1 || rc=$?
    if ((rc == 124 || rc == 137)); then echo "timed out after $cap s" >>"$log"; fi
    return $rc
}

remote() {
    local stages="${1:-tests,certify,sanitize,ptxas,ncu,bench,peer,external}"
    local out="${OUT:?OUT is set by the device tool}/round"
    mkdir -p "$out"
    # NVRTC 13 and cuBLAS come from the machine's PyTorch wheels.
    local nv
    nv="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
    if [ -n "$nv" ]; then
        for d in "$nv"/*/lib; do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
    fi
    [ -d /usr/local/cuda/lib64 ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
    # Compiled PTX is cached across the processes of the round (NVRTC takes ~20 s per process).
    export LD_LIBRARY_PATH INSTA_WORKSPACE_ROOT="$PWD" GQLA_PTX_CACHE="${GQLA_PTX_CACHE:-/tmp/gqla-ptx-cache}"
    local gqla="$pack_dir/gqla"
    {
        echo "# GPU round $(date -u +%Y-%m-%dT%H:%MZ)"
        timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        timeout 20 nvcc --version | tail -1
    } >"$out/device.txt" 2>&1 || true
    local status=0
    if [[ $stages == *tests* ]]; then
        # The device tests only: the emulator's tests run in CI and would spend device time here.
        limited 240 "$out/tests.log" "$pack_dir/cargo-nextest" nextest run --archive-file "$pack_dir/cuda-tests.tar.zst" \
            --workspace-remap . --no-capture -E 'binary(gpu)' || status=1
    fi
    if [[ $stages == *certify* ]]; then
        limited 150 "$out/certify.log" "$gqla" certify --kernel cuda --out "$out/certificate" || status=1
        # The SIMT kernel on 16-bit storage too (the default runs tensor cores there).
        limited 150 "$out/certify-simt.log" "$gqla" certify --kernel cuda-simt --out "$out/certificate-simt" || status=1
        # The Hopper wgmma kernel (sm_90 only; it declines f32 cases).
        limited 150 "$out/certify-wgmma.log" "$gqla" certify --kernel cuda-wgmma --out "$out/certificate-wgmma" || status=1
    fi
    if [[ $stages == *ptxas* ]]; then
        # Registers, shared memory and spills per kernel: the same source through nvcc's ptxas.
        # The kernel parts in build.rs's order, as NVRTC gets them.
        for part in $(sed -n '/^const PARTS/,/^];/p' cuda_impl/build.rs | grep -o '"[a-z_]*\.cuh*"' | tr -d '"'); do
            printf '#line 1 "kernels/%s"\n' "$part"
            cat "cuda_impl/kernels/$part"
        done > /tmp/gqla_kernels.cu
        limited 90 "$out/ptxas.log" nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -Xptxas -v \
            -c /tmp/gqla_kernels.cu -o /tmp/decode.o || status=1
    fi
    if [[ $stages == *sanitize* ]]; then
        local args=()
        for f in "${sanitize_filters[@]}"; do args+=(--filter "$f"); done
        for kernel in cuda cuda-wgmma; do
            for tool in memcheck racecheck initcheck; do
                limited 90 "$out/sanitize-$kernel-$tool.log" compute-sanitizer --tool "$tool" --error-exitcode 9 \
                    "$gqla" certify --kernel "$kernel" "${args[@]}" --out "/tmp/sanitize-$kernel-$tool" || status=1
            done
        done
    fi
    if [[ $stages == *ncu* ]]; then
        # Hardware counters (throughputs, tensor pipes, occupancy, stall reasons) of each
        # tensor-core kernel at the issue's targets: the compute-bound absorb point and the
        # memory-bound points of both paths. The first two matching launches are the warm-up
        # attention launch and its combine (or a second attention launch when there is no split).
        local point kernel
        for point in "deepseek-v3-gqla absorb 2" "llama3-8b-gqla gqa 1" "llama3-8b-gqla absorb 1"; do
            read -r geo path sq <<<"$point"
            for kernel in mma wgmma; do
                echo "## $geo $path s_q=$sq batch=64 context=4096, kernel $kernel" >>"$out/ncu.log"
                limited 75 "$out/ncu.log" ncu --clock-control none --section SpeedOfLight \
                    --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section Occupancy \
                    --section WarpStateStats --section LaunchStats \
                    --kernel-name regex:'^attn_((w?mma_(narrow_)?)|combine_)?bf16$' --launch-count 2 \
                    "$gqla" bench decode --kernels "$kernel" --geometry "$geo" --path "$path" --sq "$sq" \
                    --batch 64 --context 4096 || status=1
            done
        done
    fi
    if [[ $stages == *bench* ]]; then
        limited 420 "$out/bench.log" "$gqla" bench decode --out "$out/bench-decode.md" --json "$out/bench-decode.json" || status=1
        limited 30 "$out/plan-validation.md" "$gqla" plan --validate "$out/bench-decode.json" || status=1
        # Paged caches (64-token pages, shuffled) beside contiguous ones at two contexts.
        limited 90 "$out/bench-paged.log" "$gqla" bench decode --page 64 --batch 64 --context 4096,65536 \
            --out "$out/bench-decode-paged.md" || status=1
    fi
    if [[ $stages == *peer* ]]; then
        PYTHONUNBUFFERED=1 limited 300 "$out/sdpa-peer.md" python3 scripts/sdpa_peer.py || status=1
    fi
    if [[ $stages == *external* ]]; then
        # A third-party kernel certified through a vector pack: PyTorch's SDPA on the GPU, in
        # the cases' own dtypes (examples/certify_sdpa.py).
        local pack=/tmp/sdpa-pack outputs=/tmp/sdpa-outputs
        rm -rf "$pack" "$outputs"
        local log="$out/external.log"
        {
            limited 60 "$log" "$gqla" vectors export --out "$pack" --filter gqla.decode.gqa --filter gqa.decode &&
                limited 240 "$log" python3 examples/certify_sdpa.py "$pack" "$outputs" --device cuda --native &&
                limited 120 "$log" "$gqla" certify --kernel "external:$pack" --outputs "$outputs" --out "$out/certificate-sdpa"
        } || status=1
    fi
    {
        cat "$out/device.txt"
        [ -f "$out/tests.log" ] && grep -E "Summary|PASS|FAIL|skipped" "$out/tests.log" | tail -20
        [ -f "$out/certify.log" ] && tail -15 "$out/certify.log"
        [ -f "$out/certify-simt.log" ] && tail -8 "$out/certify-simt.log"
        [ -f "$out/certify-wgmma.log" ] && tail -8 "$out/certify-wgmma.log"
        for kernel in cuda cuda-wgmma; do
            for tool in memcheck racecheck initcheck; do
                local log="$out/sanitize-$kernel-$tool.log"
                [ -f "$log" ] && echo "$kernel $tool: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)"
            done
        done
        [ -f "$out/ptxas.log" ] && grep -E "Compiling entry|registers|spill" "$out/ptxas.log"
        [ -f "$out/bench-decode.md" ] && cat "$out/bench-decode.md"
        [ -f "$out/bench-decode-paged.md" ] && cat "$out/bench-decode-paged.md"
        [ -f "$out/sdpa-peer.md" ] && cat "$out/sdpa-peer.md"
        [ -f "$out/plan-validation.md" ] && cat "$out/plan-validation.md"
        [ -f "$out/external.log" ] && tail -6 "$out/external.log"
    } >"$OUT/summary.md" 2>&1 || true
    tar czf "$OUT/round.tgz" -C "$OUT" round
    cat "$OUT/summary.md"
    return $status
}

case "${1:-}" in
    pack) pack ;;
    remote) remote "${2:-}" ;;
    *)
        echo "usage: $0 pack | remote [tests,certify,sanitize,ptxas,ncu,bench,peer,external]" >&2
        exit 2
        ;;
esac
