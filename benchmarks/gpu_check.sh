#!/usr/bin/env bash
# The GPU checks and measurements in one call (benchmarks/README.md, "On a GPU"):
#   1. the CUDA tests (tests/test_cuda.py: graphed SAC updates against eager ones, a resumed
#      checkpoint, the whole loop on the GPU, seeds in turns against their single runs; part
#      tests_compile: tests/test_compile.py's steps compiled whole without CUDA graphs, as on
#      a CPU, against eager ones on the GPU);
#   1b. whether the CUDA graphs of several runs replay at once on their streams, and what a
#      replay costs the host (graph_streams.py; the question under 5's throughput), with
#      CUDA's default 8 hardware queues for streams and with 32, and for blocks of 20
#      updates in one graph (as the loop replays them);
#   2. the end-to-end loop (tom bench): hopper at the paper preset, 20 000-transition buffer,
#      one epoch, for each objective eager (compile=false cuda_graph=false), with CUDA graphs
#      (compile=false), as the paper preset runs (compiled, with CUDA graphs; the bench
#      prints its speed without the seconds of compiling too) and (part bench_..._whole)
#      each step compiled whole without CUDA graphs (compile=true cuda_graph=false);
#   3. single steps (throughput.py micro --device cuda): the SAC update eager, as a CUDA graph
#      and compiled; the model step; a rollout step; a TOM refit;
#   4. the population scaling of the inner steps (population.py --device cuda), stacked
#      members' steps eager and (part population_graph) replayed from CUDA graphs;
#   5. runs in turns in one process (tom bench --seeds P, tom.population) for each P in
#      POPULATIONS (default "2 5"; each member gets its own CUDA stream), first objective;
#      and evaluation.py, a run's evaluation with 1 000-step episodes, alone and of 10 seeds
#      in turns (part seeds_evaluation); then the same with the runs' work stacked into one
#      (part stacked: stack_seeds=true; and stacked.py, a SAC block, a dual and a
#      discriminator training and a model-fit epoch alone), with cuda_graph_steps=10
#      (part seeds_steps), with a turn per whole inner loop instead of every 10 steps (part
#      seeds_loopturns, --steps-per-turn 0), with 32 hardware queues for streams (part
#      seeds_connections), and 20 real steps around a refit under torch.profiler
#      (part timeline: the GPU's overlap, the host's waits and launches; gpu_timeline.py;
#      part timeline_stacked: the same with stack_seeds);
#   6. for each N in PROCESSES (default none), N separate processes at once on the one GPU,
#      each one run (tom bench, 1 CPU thread each), first objective: the alternative to 5;
#   7. where PAPER_CODE names a checkout of the paper's code (carried along; never
#      committed), the side by side on the GPU (paper_code.py --device cuda).
# PARTS picks which run (default "tests streams bench micro population seeds timeline
# processes paper_code"; "bench" is 2 and its runs of the other objectives, "seeds" is 5
# but its timeline, "streams" is 1b). Each part has its own
# time limit and the whole a deadline (BUDGET seconds, default 500): a part that would start
# after it is skipped, and said so. Logs and the CSV go to $OUT (default ./gpu_out).
#
#     bash benchmarks/gpu_check.sh   # or BUDGET=300 PARTS="tests seeds" POPULATIONS="1 10" bash ...
#
# Where .whl/ holds wheels (a machine without a package index), they are installed first
# (what the lent machines' image lacks: gymnasium, mujoco, pydantic, greenlet and what they
# need, for Python 3.12; benchmarks/README.md);
# with PAPER_CODE, also those in .whl/paper_deps/ (the paper's code imports matplotlib, tqdm).
set -u
OUT=${OUT:-gpu_out}
BUDGET=${BUDGET:-500}
OBJECTIVES=${OBJECTIVES:-"tom mle"}
POPULATIONS=${POPULATIONS:-"2 5"}
PROCESSES=${PROCESSES:-}
PARTS=${PARTS:-"tests streams bench micro population seeds stacked timeline processes paper_code"}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
start=$SECONDS

if [ -d .whl ]; then
    wheels=(.whl/*.whl)  # and where the paper's code runs, what it imports (.whl/paper_deps)
    [ -n "${PAPER_CODE:-}" ] && [ -d .whl/paper_deps ] && wheels+=(.whl/paper_deps/*.whl)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site "${wheels[@]}" || exit 1
    export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi

# part NAME LIMIT COMMAND...: run COMMAND under min(LIMIT, time left), its output to
# $OUT/NAME.log and to the screen; only where PARTS names NAME or what NAME_... begins with.
part() {
    local name=$1 limit=$2 left
    shift 2
    local kind
    for kind in $PARTS ""; do [[ $name == "$kind" || $name == "$kind"_* ]] && break; done
    [ -n "$kind" ] || return 0
    left=$((BUDGET - (SECONDS - start)))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, $left s left of $BUDGET"
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (at most $limit s; $((SECONDS - start)) s in)"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - start)) s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
# Everything the parts import, before any of them runs: a missing wheel ends the call in
# seconds (one call's parts each failed at import for want of greenlet).
python3 -c "import torch, gymnasium, mujoco, pydantic, greenlet, tom.population
print('torch', torch.__version__, torch.cuda.get_device_name(), '| gymnasium',
      gymnasium.__version__, '| mujoco', mujoco.__version__)" || exit 1

bench() {  # bench OBJECTIVE eager|graph|whole|preset
    local extra=()
    [ "$2" = eager ] && extra=(--set compile=false cuda_graph=false)
    [ "$2" = whole ] && extra=(--set compile=true cuda_graph=false)
    [ "$2" = graph ] && extra=(--set compile=false cuda_graph=true)
    part "bench_$1_$2" 200 python3 -m tom.cli bench --env hopper --objective "$1" \
        --device cuda --threads 2 --buffer-size 20000 --steps 1000 --csv "$OUT/bench.csv" \
        "${extra[@]}"
}

part tests 150 python3 -m pytest -q -rA -p no:cacheprovider tests/test_cuda.py
part tests_compile 200 python3 -m pytest -q -rA -p no:cacheprovider tests/test_compile.py -k cuda
part streams 120 python3 benchmarks/graph_streams.py --members 1 2 5 10
part streams_block 120 python3 benchmarks/graph_streams.py --members 1 2 5 10 --block 20 \
    --rounds 20  # as the loop replays them: 20 updates in one graph
# the same with 32 hardware queues for the streams instead of CUDA's default 8
part streams_connections 120 env CUDA_DEVICE_MAX_CONNECTIONS=32 \
    python3 benchmarks/graph_streams.py --members 1 2 5 10
first=${OBJECTIVES%% *}
bench "$first" preset
bench "$first" eager
bench "$first" graph
bench "$first" whole
part micro 150 python3 benchmarks/throughput.py micro --device cuda --threads 2 --repeats 5 \
    --sac eager graph compile graph+compile
part population 90 python3 benchmarks/population.py --device cuda --members 1 2 5 10 20 \
    --repeats 5
part population_graph 90 python3 benchmarks/population.py --device cuda --graph \
    --members 1 2 5 10 20 --repeats 5
part stacked_work 150 python3 benchmarks/stacked.py --device cuda --members 1 2 5 10 \
    --repeats 5
part seeds_evaluation 150 python3 benchmarks/evaluation.py --device cuda --threads 2 \
    --members 1 10 --repeats 3
for size in $POPULATIONS; do
    part "seeds_$size" 240 python3 -m tom.cli bench --env hopper --objective "$first" \
        --device cuda --threads 2 --buffer-size 20000 --steps 1000 --seeds "$size" \
        --csv "$OUT/bench.csv"
done
for size in $POPULATIONS; do  # the same with the runs' work stacked (stack_seeds)
    part "stacked_$size" 240 python3 -m tom.cli bench --env hopper --objective "$first" \
        --device cuda --threads 2 --buffer-size 20000 --steps 1000 --seeds "$size" \
        --set stack_seeds=true --csv "$OUT/bench.csv"
done
for size in $POPULATIONS; do  # the same with 10 model-fit or dual steps per graph launch
    part "seeds_steps_$size" 240 python3 -m tom.cli bench --env hopper --objective "$first" \
        --device cuda --threads 2 --buffer-size 20000 --steps 1000 --seeds "$size" \
        --set cuda_graph_steps=10 --csv "$OUT/bench.csv"
done
for size in $POPULATIONS; do  # the same with a turn per whole inner loop (before in_turns)
    part "seeds_loopturns_$size" 240 python3 -m tom.cli bench --env hopper --objective "$first" \
        --device cuda --threads 2 --buffer-size 20000 --steps 1000 --seeds "$size" \
        --steps-per-turn 0 --csv "$OUT/bench.csv"
done
for size in $POPULATIONS; do  # the same with 32 hardware queues for the streams (CUDA's: 8)
    part "seeds_connections_$size" 240 env CUDA_DEVICE_MAX_CONNECTIONS=32 python3 -m tom.cli \
        bench --env hopper --objective "$first" --device cuda --threads 2 --buffer-size 20000 \
        --steps 1000 --seeds "$size" --csv "$OUT/bench.csv"
done
for size in $POPULATIONS; do  # 20 real steps around a refit under torch.profiler
    part "timeline_$size" 240 python3 benchmarks/gpu_timeline.py --objective "$first" \
        --seeds "$size" --skip 240 --steps 20
done
for size in $POPULATIONS; do  # the same with the runs' work stacked (stack_seeds)
    part "timeline_stacked_$size" 240 python3 benchmarks/gpu_timeline.py --objective "$first" \
        --seeds "$size" --skip 240 --steps 20 --set stack_seeds=true
done
for count in $PROCESSES; do  # each process writes its own CSV and log; their last lines
    part "processes_$count" 300 bash -c 'for i in $(seq 1 "$1"); do
            python3 -m tom.cli bench --env hopper --objective "$2" --device cuda --threads 1 \
                --buffer-size 20000 --steps 1000 --csv "$3/processes_$1_$i.csv" \
                >"$3/processes_$1_$i.log" 2>&1 &
        done
        wait
        tail -q -n 1 "$3"/processes_"$1"_*.log' _ "$count" "$first" "$OUT"
done
if [ -n "${PAPER_CODE:-}" ]; then
    part paper_code 400 python3 benchmarks/paper_code.py --checkout "$PAPER_CODE" \
        --device cuda --env hopper --objective $OBJECTIVES --buffer-size 20000 --epochs 1 \
        --threads 2 --csv "$OUT/paper_code.csv"
fi
for objective in ${OBJECTIVES#"$first"}; do
    bench "$objective" preset
    bench "$objective" eager
    bench "$objective" graph
done
echo "== done in $((SECONDS - start)) s"
[ -f "$OUT/bench.csv" ] && cat "$OUT/bench.csv"
