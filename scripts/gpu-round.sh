#!/usr/bin/env bash
# The GPU round: the most evidence one device call can return.
#
#   scripts/gpu-round.sh pack                  # here: the release `gqla` (and test archive) to carry
#   bash scripts/gpu-round.sh remote all       # on the device: every stage below, at most 9 minutes
#   bash scripts/gpu-round.sh remote probes,certify   # some stages (also: tests, ptxas, ncu, external)
#   scripts/gpu-round.sh dry-run               # here: the same stages on the emulator, scaled down
#
# The stages of `all`, most needed first, each under its own time limit (seconds) and never past
# the round's budget (GQLA_ROUND_BUDGET_S, 540 unless set; the device tool allows 600 a call):
#   probes    30   gqla probe: the mma.sync and wgmma layouts, one product each
#   certify  220   gqla certify --kernel cuda-mma, then cuda-wgmma, on the must-pass list
#   sanitize 120   compute-sanitizer: memcheck on three cases, racecheck on one
#   bench    100   gqla bench decode: LLaMA-3-8B and DeepSeek-V3 geometry, batch 64, contexts 4k and
#                  32k, s_q 1 and 2, against the copy and GEMM ceilings of the same run
#   peer      50   PyTorch SDPA at the same points (scripts/sdpa_peer.py)
#   validate  15   gqla plan --validate on the benchmark's measured run
# A stage that runs out of time is cut (its log says so) and the round goes on. $OUT receives at
# most 8 files: summary.md (written first, and again after every stage, so a cut-off call still
# returns it), bench-decode.md, bench-decode.json, sdpa-peer.md, plan-validation.md, and
# round.tgz with every log and certificate.
set -euo pipefail
cd "$(dirname "$0")/.."
pack_dir=target/gpu-round

# compute-sanitizer's cases (case-id prefixes; cuda_impl/tests/gpu.rs checks that each selects a
# lattice case). memcheck: split KV with empty splits and padding rows on the absorb path, the
# per-group rope layout paged over a long row, and the cache expansion. racecheck: the tensor-core
# kernel's shared tiles on a paged GQA case.
memcheck_cases=(
    "gqla.decode.absorb:h=16;dc=512;dn=128;dr=64;sq=2;ctx=0,17,pad,1,130;page=64;dtype=bf16;splits=16"
    "gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=per_group;sq=2;ctx=0,65,pad,4097;page=16"
    "gqla.cache.expand:g=8;dc=512;dn=128;dv=128;ctx=65,130,3;page=16"
)
racecheck_case="gqla.decode.gqa:h=16;g=4;dn=128;dr=64;dv=128;rope=once;sq=2;ctx=65,130,3;page=16"

all_stages=probes,certify,sanitize,bench,peer,validate
round_start=$SECONDS
round_budget=${GQLA_ROUND_BUDGET_S:-540}

pack() {
    mkdir -p "$pack_dir"
    cargo build --release --bin gqla
    cp target/release/gqla "$pack_dir/gqla"
    strip "$pack_dir/gqla" 2>/dev/null || true
    # The gqla Python package (stage `external`: a Python kernel certified in process there).
    cargo build --release -p gqla-python
    rm -rf "$pack_dir/py" && mkdir -p "$pack_dir/py/gqla"
    cp python/gqla/*.py "$pack_dir/py/gqla/"
    cp target/release/lib_native.so "$pack_dir/py/gqla/_native.abi3.so"
    strip "$pack_dir/py/gqla/_native.abi3.so" 2>/dev/null || true
    # The device tests (stage `tests`, outside `all`), when cargo-nextest is installed.
    if command -v cargo-nextest >/dev/null; then
        cargo nextest archive --release -p gqla-cuda --archive-file "$pack_dir/cuda-tests.tar.zst"
        cp "$(command -v cargo-nextest)" "$pack_dir/cargo-nextest"
        strip "$pack_dir/cargo-nextest" 2>/dev/null || true
    fi
    du -sh "$pack_dir"/*
    local total
    total=$(du -sm "$pack_dir" | cut -f1)
    echo "carry: $pack_dir, $total MiB (the device tool carries 64 MiB at most)"
    ((total < 64)) || { echo "the carry is over 64 MiB" >&2; exit 1; }
}

# limited CAP LOG CMD...: run CMD with its output appended to LOG, for at most CAP seconds and
# never past the round's budget (15 s are kept for the summary and archive). timeout signals the
# whole process group, so a sanitizer's target goes too.
limited() {
    local cap=$1 log=$2
    shift 2
    local left=$((round_budget - (SECONDS - round_start) - 15))
    ((left < cap)) && cap=$left
    if ((cap < 5)); then
        echo "skipped: no time left in this call" >>"$log"
        return 1
    fi
    local rc=0
    timeout --kill-after=5 "$cap" "$@" >>"$log" 2>&1 || rc=$?
    if ((rc == 124 || rc == 137)); then echo "timed out after $cap s" >>"$log"; fi
    return $rc
}

# stage NAME LIMIT: the limit a stage's commands share; then `finish NAME` records how it went.
declare -A stage_limit=([probes]=30 [certify]=220 [sanitize]=120 [bench]=100 [peer]=50 [validate]=15
    [tests]=240 [ptxas]=90 [ncu]=150 [external]=300)
stage_rows=()
stage_t0=0
stage_ok=1
stage_skipped=""
begin() {
    stage_t0=$SECONDS
    stage_ok=1
    stage_skipped=""
    echo "== $1 (limit ${stage_limit[$1]} s)" >&2
}
# The time left of the running stage's limit, for its next command.
left_of() { echo $((stage_limit[$1] - (SECONDS - stage_t0))); }
run_in() { # run_in STAGE LOG CMD...: one command of a stage, within what is left of its limit
    local stage=$1 log=$2
    shift 2
    limited "$(left_of "$stage")" "$log" "$@" || stage_ok=0
}
# certify_in STAGE LOG CMD...: a certification. One narrowed by --filter is PARTIAL by design
# (exit 1: every case passed, the coverage core is not met); that counts as ok when its log has a
# PARTIAL verdict line and none NOT CONFORMANT or NOTHING CERTIFIED.
certify_in() {
    local stage=$1 log=$2 rc=0
    shift 2
    limited "$(left_of "$stage")" "$log" "$@" || rc=$?
    if ((rc == 1)) && grep -qE '^PARTIAL — ' "$log" && ! grep -qE '^(NOT CONFORMANT|NOTHING CERTIFIED) — ' "$log"; then
        rc=0
    fi
    ((rc == 0)) || stage_ok=0
}
finish() {
    local took=$((SECONDS - stage_t0)) verdict=ok
    ((stage_ok)) || verdict=FAILED
    [ -n "$stage_skipped" ] && verdict="skipped: $stage_skipped"
    stage_rows+=("| $1 | ${stage_limit[$1]} | $took | $verdict |")
    ((stage_ok)) || status=1
    write_summary
}

summary_parts() { # the sections of summary.md, from what the stages left in $round
    echo "# GPU round ($mode) $(date -u +%Y-%m-%dT%H:%MZ)"
    echo
    cat "$round/device.txt" 2>/dev/null || true
    echo
    echo "| stage | limit (s) | took (s) | result |"
    echo "|---|---|---|---|"
    printf '%s\n' "${stage_rows[@]}"
    echo
    echo "Round: $((SECONDS - round_start)) s of a budget of $round_budget s."
    local f
    for f in probes.log certify-mma.log certify-wgmma.log; do
        [ -f "$round/$f" ] && { echo; echo "## ${f%.log}"; echo '```'; tail -12 "$round/$f"; echo '```'; }
    done
    for f in "$round"/sanitize-*.log; do
        [ -f "$f" ] && echo "- $(basename "$f" .log): $( (grep -E 'ERROR SUMMARY|RACECHECK SUMMARY|CONFORMANT|PARTIAL|NOTHING CERTIFIED|timed out|skipped|no host' "$f" || tail -1 "$f") | tail -1)"
    done
    [ -f "$OUT/bench-decode.md" ] && { echo; cat "$OUT/bench-decode.md"; }
    [ -f "$OUT/sdpa-peer.md" ] && { echo; cat "$OUT/sdpa-peer.md"; }
    [ -f "$OUT/plan-validation.md" ] && { echo; cat "$OUT/plan-validation.md"; }
    for f in "$round"/*.log; do
        [ -f "$f" ] && grep -qE "timed out|skipped: no time" "$f" && echo "- $(basename "$f"): $(tail -1 "$f")"
    done
    true
}
write_summary() { summary_parts >"$OUT/summary.md.tmp" 2>&1 && mv "$OUT/summary.md.tmp" "$OUT/summary.md"; }

# The stages, on the device (mode remote) or on the host emulator (mode dry-run).
run_stages() {
    local stages=$1
    [ "$stages" = all ] && stages=$all_stages
    local gqla=$gqla_bin
    local s
    for s in ${stages//,/ }; do
        [ -n "${stage_limit[$s]:-}" ] || { echo "unknown stage $s (stages: $all_stages, tests, ptxas, ncu, external)" >&2; exit 2; }
    done
    if [[ ,$stages, == *,probes,* ]]; then
        begin probes
        if [ "$mode" = remote ]; then run_in probes "$round/probes.log" "$gqla" probe
        else run_in probes "$round/probes.log" "$gqla" probe --emulator; fi
        finish probes
    fi
    if [[ ,$stages, == *,certify,* ]]; then
        begin certify
        local k
        for k in mma wgmma; do
            if [ "$mode" = remote ]; then
                # The must-pass list: every lattice case (each kernel declines what it cannot take).
                run_in certify "$round/certify-$k.log" "$gqla" certify --kernel "cuda-$k" --out "$round/certificate-$k"
            else
                # Scaled down: the sanitizer cases, on the emulator.
                local args=()
                for f in "${memcheck_cases[@]}" "$racecheck_case"; do args+=(--filter "$f"); done
                certify_in certify "$round/certify-$k.log" "$gqla" certify --kernel "cuda-emu-$k" "${args[@]}" --out "$round/certificate-$k"
            fi
        done
        finish certify
    fi
    if [[ ,$stages, == *,sanitize,* ]]; then
        begin sanitize
        local args=()
        for f in "${memcheck_cases[@]}"; do args+=(--filter "$f"); done
        if [ "$mode" = remote ]; then
            certify_in sanitize "$round/sanitize-memcheck.log" compute-sanitizer --tool memcheck --error-exitcode 9 \
                "$gqla" certify --kernel cuda-mma "${args[@]}" --out /tmp/sanitize-memcheck
            certify_in sanitize "$round/sanitize-racecheck.log" compute-sanitizer --tool racecheck --error-exitcode 9 \
                "$gqla" certify --kernel cuda-mma --filter "$racecheck_case" --out /tmp/sanitize-racecheck
        else
            # The emulator checks every global access against the launch's buffers itself.
            certify_in sanitize "$round/sanitize-memcheck.log" "$gqla" certify --kernel cuda-emu "${args[@]}" --out /tmp/sanitize-memcheck
            echo "racecheck: no host analogue here (the emulator's shared-memory checks run in CI's emu tests)" \
                >>"$round/sanitize-racecheck.log"
        fi
        finish sanitize
    fi
    if [[ ,$stages, == *,bench,* ]]; then
        begin bench
        if [ "$mode" = remote ]; then
            run_in bench "$round/bench.log" "$gqla" bench decode --geometry llama3-8b-gqla,deepseek-v3-gqla \
                --batch 64 --context 4096,32768 --sq 1,2 --out "$OUT/bench-decode.md" --json "$OUT/bench-decode.json"
        else
            # The benchmark's code path on a tiny geometry (timing, spot checks, paging).
            run_in bench "$round/bench.log" cargo test --release -q -p gqla-cuda --test emu -- \
                benchmark_points_run_and_pass_their_spot_checks
        fi
        finish bench
    fi
    if [[ ,$stages, == *,peer,* ]]; then
        begin peer
        if [ "$mode" = remote ]; then
            run_in peer "$OUT/sdpa-peer.md" python3 scripts/sdpa_peer.py \
                --geometry llama3-8b-gqla,deepseek-v3-gqla --batch 64 --context 4096,32768 --sq 1,2
        elif "${GQLA_PYTHON:-python3}" -c "import torch" 2>/dev/null; then
            run_in peer "$OUT/sdpa-peer.md" "${GQLA_PYTHON:-python3}" scripts/sdpa_peer.py --device cpu \
                --geometry tiny --batch 2 --context 256 --sq 1,2
        else
            stage_skipped="${GQLA_PYTHON:-python3} cannot import torch (set GQLA_PYTHON)"
        fi
        finish peer
    fi
    if [[ ,$stages, == *,validate,* ]]; then
        begin validate
        if [ -f "$OUT/bench-decode.json" ]; then
            run_in validate "$OUT/plan-validation.md" "$gqla" plan --validate "$OUT/bench-decode.json"
        else
            stage_skipped="no measured run (the bench stage writes it on a GPU)"
            [ "$mode" = remote ] && stage_ok=0
        fi
        finish validate
    fi
    # Stages outside `all`, for a second call.
    if [[ ,$stages, == *,tests,* ]]; then
        begin tests
        run_in tests "$round/tests.log" "$pack_dir/cargo-nextest" nextest run --archive-file "$pack_dir/cuda-tests.tar.zst" \
            --workspace-remap . --no-capture -E 'binary(gpu)'
        finish tests
    fi
    if [[ ,$stages, == *,ptxas,* ]]; then
        begin ptxas
        # Registers, shared memory and spills per kernel: the kernel parts in build.rs's order.
        for part in $(sed -n '/^const PARTS/,/^];/p' cuda_impl/build.rs | grep -o '"[a-z_]*\.cuh*"' | tr -d '"'); do
            printf '#line 1 "kernels/%s"\n' "$part"
            cat "cuda_impl/kernels/$part"
        done >/tmp/gqla_kernels.cu
        run_in ptxas "$round/ptxas.log" nvcc -gencode=arch=compute_90a,code=sm_90a -std=c++17 -Xptxas -v \
            -c /tmp/gqla_kernels.cu -o /tmp/gqla_kernels.o
        finish ptxas
    fi
    if [[ ,$stages, == *,ncu,* ]]; then
        begin ncu
        local k
        for k in mma wgmma; do
            run_in ncu "$round/ncu.log" ncu --clock-control none --section SpeedOfLight --section MemoryWorkloadAnalysis \
                --section ComputeWorkloadAnalysis --section Occupancy --section WarpStateStats \
                --kernel-name regex:'^attn_((w?mma_(narrow_)?)|combine_)?bf16$' --launch-count 2 \
                "$gqla" bench decode --kernels "$k" --geometry deepseek-v3-gqla --path absorb --sq 2 --batch 64 --context 4096
        done
        finish ncu
    fi
    if [[ ,$stages, == *,external,* ]]; then
        begin external
        # A third-party kernel certified in process with the gqla package: PyTorch's SDPA on the
        # GPU, in the case dtype, on every decode case.
        certify_in external "$round/external.log" env PYTHONPATH="$py_dir" "$python_bin" examples/certify_sdpa.py \
            --device "$external_device" --native --out "$round/certificate-sdpa"
        finish external
    fi
}

# Everything a stage needs on the device: NVRTC and cuBLAS from the machine's PyTorch wheels, the
# PTX cache shared by the round's processes (NVRTC takes ~20 s a process).
device_env() {
    local nv
    nv="$(python3 -c 'import nvidia; print(list(nvidia.__path__)[0])' 2>/dev/null || true)"
    if [ -n "$nv" ]; then
        for d in "$nv"/*/lib; do LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"; done
    fi
    [ -d /usr/local/cuda/lib64 ] && LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:/usr/local/cuda/lib64"
    export LD_LIBRARY_PATH INSTA_WORKSPACE_ROOT="$PWD" GQLA_PTX_CACHE="${GQLA_PTX_CACHE:-/tmp/gqla-ptx-cache}" PYTHONUNBUFFERED=1
    {
        timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
        timeout 20 nvcc --version | tail -1
    } >"$round/device.txt" 2>&1 || true
}

status=0
mode=${1:-}
case "$mode" in
    pack) pack ;;
    remote)
        OUT="${OUT:?OUT is set by the device tool}"
        round="$OUT/round"
        mkdir -p "$round"
        gqla_bin="$pack_dir/gqla"
        py_dir="$pack_dir/py" python_bin=python3 external_device=cuda
        device_env
        write_summary
        run_stages "${2:-all}"
        write_summary
        tar czf "$OUT/round.tgz" -C "$OUT" round && rm -rf "$round"
        cat "$OUT/summary.md"
        exit $status
        ;;
    dry-run)
        export OUT="${OUT:-target/gpu-round-dry-run}"
        rm -rf "$OUT"
        round="$OUT/round"
        mkdir -p "$round"
        # Built before the clock starts: the stages time what a device call would run.
        cargo build --release --bin gqla
        cargo test --release -q -p gqla-cuda --test emu --no-run
        gqla_bin=target/release/gqla
        if [[ ,${2:-all}, == *,external,* ]]; then
            cargo build --release -p gqla-python
            py_dir=target/gpu-round-dry-run-py
            rm -rf "$py_dir"
            mkdir -p "$py_dir/gqla"
            cp python/gqla/*.py "$py_dir/gqla/"
            cp target/release/lib_native.so "$py_dir/gqla/_native.abi3.so"
        fi
        python_bin="${GQLA_PYTHON:-python3}" external_device=cpu
        round_start=$SECONDS
        echo "host: $(nproc) cores, $(uname -m), the CUDA kernels on the host emulator (no GPU)" >"$round/device.txt"
        write_summary
        run_stages "${2:-all}"
        write_summary
        tar czf "$OUT/round.tgz" -C "$OUT" round && rm -rf "$round"
        cat "$OUT/summary.md"
        echo "files in $OUT: $(find "$OUT" -type f | wc -l) (at most 8)"
        exit $status
        ;;
    *)
        echo "usage: $0 pack | remote [all|STAGES] | dry-run [all|STAGES]   (STAGES: $all_stages, tests, ptxas, ncu, external)" >&2
        exit 2
        ;;
esac
