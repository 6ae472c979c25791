#!/usr/bin/env bash
# Run every run of a grid file: smoke-check them all first, then the real runs, then the table.
#
#   bash run_grid.sh [GRID] [--nproc N] [--gpus 0,1,...] [--smoke|--no-smoke] [--dry-run] [--out_dir D]
#                    [-- TRAIN.PY ARGS]
#
#   GRID        grid file (default grids/exp1.grid; syntax in its header and in grid.py)
#   --nproc N   processes (GPUs) per run, launched with torchrun (default 1: plain python)
#   --gpus L    run the grid as a queue over these GPUs: N per run, as many runs at once as fit,
#               each with its own CUDA_VISIBLE_DEVICES and rendezvous port
#   --smoke     smoke phase first: every run with train.py --smoke (the default); --no-smoke skips it
#   --dry-run   print the expanded commands and nothing else
#   --out_dir D runs go to D/<grid name>/<run name>/ (default runs)
#   --sync      upload the grid's offline W&B runs (resumed starts included) with wandb sync; runs nothing
#   -- ARGS     appended to every run of the grid (e.g. -- --epochs 1)
#   --slurm     send the grid to a SLURM cluster instead: a job array, one task per run; its own
#               options: bash run_grid.sh --slurm --help (README: "Grids on a SLURM cluster")
#
# Finished runs (results.json, with the settings of their grid line) are skipped; interrupted ones
# resume: rerun the same command. A run folder holding other settings is refused before anything runs.
# A failing run does not stop the grid; the exit code is non-zero if any run failed.
# Stages: a run with --model run:NAME starts from the model of NAME, a --task mlm run on an earlier
# line; it waits for NAME to end and is not started (counted failed) if NAME did not finish.
set -uo pipefail
cd "$(dirname "$0")" || exit 2
# shellcheck source=grid_lib.sh
source ./grid_lib.sh

extra=() grid="" nproc=1 gpus="" smoke=1 dry_run=0 sync=0 out_root="" port_base=${GRID_PORT_BASE:-29500}
# --slurm: slurm.py writes and submits the jobs; it takes all the options (they differ from these)
for arg in "$@"; do
  [ "$arg" = -- ] && break
  [ "$arg" = --slurm ] && exec "${PYTHON:-python}" slurm.py "$@"
done
while [ $# -gt 0 ]; do
  case "$1" in
    --nproc) need_value "$@"; nproc=$2; shift 2 ;;
    --gpus) need_value "$@"; gpus=$2; shift 2 ;;
    --smoke) smoke=1; shift ;;
    --no-smoke) smoke=0; shift ;;
    --dry-run) dry_run=1; shift ;;
    --sync) sync=1; shift ;;
    --out_dir) need_value "$@"; out_root=$2; shift 2 ;;
    -h|--help) print_usage "$0"; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) grid=$1; shift ;;
  esac
done
[[ "$nproc" =~ ^[1-9][0-9]*$ ]] || die "--nproc must be a positive integer (got $nproc)"
[ -z "$gpus" ] || [[ "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--gpus takes GPU indices like 0,1,2 (got $gpus)"
PYTHON=${PYTHON:-python}
if [ -z "$grid" ] || [ -z "$out_root" ]; then
  load_defaults
  grid=${grid:-$DEFAULT_GRID} out_root=${out_root:-$DEFAULT_OUT_ROOT}
fi
[ -f "$grid" ] || die "grid file $grid not found"
name=$("$PYTHON" grid.py name "$grid") || exit 2
out="$out_root/$name"

offline_runs() {  # the grid's offline W&B run folders: per run, each start (a resume adds one) in time order
  local f; for f in "$out"/*/wandb/offline-run-*; do [ -d "$f" ] && echo "$f"; done
}
if [ "$sync" = 1 ]; then
  mapfile -t offline < <(offline_runs)
  [ ${#offline[@]} -gt 0 ] || die "no offline W&B runs in $out/*/wandb/ (nothing to sync)"
  command -v wandb >/dev/null || die "--sync needs the wandb command (pip install wandb)"
  echo "wandb sync: ${#offline[@]} offline run folders of grid $name"
  exec wandb sync --yes "${offline[@]}"  # the starts of one run are synced one after another, in time order
fi

# Expand and check every line with train.py's own parser before anything runs.
expand_runs "$grid" "${extra[@]}" || exit 2

# Device slots: one per group of N GPUs (--gpus), or a single slot that uses what it sees.
slots=()
if [ -n "$gpus" ]; then
  IFS=',' read -r -a gpu_list <<< "$gpus"
  (( ${#gpu_list[@]} >= nproc )) || die "--gpus lists ${#gpu_list[@]} GPUs but each run needs --nproc $nproc"
  for ((i = 0; i + nproc <= ${#gpu_list[@]}; i += nproc)); do
    slots+=("$(IFS=,; echo "${gpu_list[*]:i:nproc}")")
  done
else
  slots+=("")
fi

PROCS_PER_NODE=$nproc PLAIN_ONE_PROCESS=1 OUT=$out
use_slot() {  # $1 = slot index: its devices (--gpus) and its rendezvous port (--gpus with --nproc above 1)
  RUN_DEVICES=${slots[$1]} RUN_PORT=""
  if [ -n "$gpus" ]; then RUN_PORT=$((port_base + $1)); fi
}

if [ "$dry_run" = 1 ]; then
  use_slot 0
  for run in "${runs[@]}"; do
    read_run "$run"
    mapfile -t cmd < <(launcher_words)
    printf '%q ' "${cmd[@]}" "${args[@]}" --out_dir "$out" --wandb_group "$name"
    echo
  done
  exit 0
fi

# finished means finished with the settings of its grid line: a run folder holding other settings
# is refused here, naming the line and the settings, before anything starts
load_finished "$grid" "$out" "${extra[@]}" || exit 2

mkdir -p "$out/logs"
# one launch per grid folder: a second one is refused here, before it writes anything (it would
# truncate the live runs' logs). The runs inherit the lock, so it holds while any of them lives.
exec {grid_lock}>>"$out/.grid.lock"
if ! flock -n "$grid_lock"; then
  runner=$(cat "$out/.grid.pid" 2>/dev/null || echo '?')
  if [[ "$runner" =~ ^[0-9]+$ ]] && kill -0 "$runner" 2>/dev/null; then
    die "grid $name is already running (run_grid.sh pid $runner, runs in $out); wait for it, or stop it first" \
      "(bash tmux_launch.sh --stop $grid, or kill -TERM that pid)"
  fi
  # the runner died (kill -9) and the runs it started hold the lock they inherited: name them
  exec {grid_lock}>&-  # not this launch's own handle
  holders=$("$PYTHON" grid.py lock-holders "$out")
  die "grid $name: its runner (pid $runner) is gone, but processes it started are" \
    "${holders:-holding its lock (they may just have ended: try again)}"
fi
echo "$$" > "$out/.grid.pid"
declare -a slot_pid slot_name
declare -A succeeded=()
done_runs=() skipped=() failed=() stopped=() collapsed=()
write_status() {  # $1 = phase (smoke | real | report | ended), $2 = how it ended: grid.status, for
  # tmux_launch.sh --status (grid_lib.sh's format)
  local s lines=("phase $1" "pid $$" "grid $grid" "runs ${#runs[@]}" "done $(( ${#done_runs[@]} + ${#skipped[@]} + ${#collapsed[@]} ))"
    "failed ${#failed[@]}" "stopped ${#stopped[@]}")
  for s in "${!slots[@]}"; do if [ -n "${slot_pid[$s]:-}" ]; then lines+=("running ${slot_name[$s]}"); fi; done
  if [ -n "${2:-}" ]; then lines+=("ended $2"); fi
  write_status_file "$out/grid.status" "${lines[@]}"
}
stopping=0 child=""
on_signal() {
  stopping=1
  echo "run_grid: interrupted; letting running runs checkpoint..."
  [ -n "$child" ] && kill -TERM "$child" 2>/dev/null
  for pid in "${slot_pid[@]:-}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null; done
}
trap on_signal INT TERM HUP

# ---- smoke phase: same code path, 64 examples, 1 epoch, for every run whose smoke run is needed
# (grid.py smoke-skips: as in the SLURM smoke job); stop on any failure
if [ "$smoke" = 1 ]; then
  echo "== smoke phase: ${#runs[@]} runs"
  write_status smoke
  use_slot 0
  smoke_phase "$grid" "${extra[@]}"; status=$?
  if [ "$status" = 130 ]; then echo "run_grid: stopped during the smoke phase"; write_status ended stopped; exit 130; fi
  if [ "$status" != 0 ]; then
    echo "stopping before the real runs." >&2
    write_status ended "smoke failed${smoke_log:+: $run_name, log $smoke_log}"
    exit 1
  fi
fi

# ---- real runs: a queue over the device slots
echo "== real runs: ${#runs[@]} (${#slots[@]} at a time)"
write_status real
finish_slot() {  # $1 = slot index: reap its run and record how it ended (grid_lib.sh's run_outcome)
  local s=$1 status slot_run=${slot_name[$1]} log="$out/logs/${slot_name[$1]}.log"
  exit_status_of "${slot_pid[$s]}"; status=$?
  run_outcome "$out/$slot_run" "$status"
  case "$outcome" in
    done) done_runs+=("$slot_run") succeeded[$slot_run]=1; echo "[done] $slot_run${outcome_detail:+ $outcome_detail}" ;;
    collapsed) collapsed+=("$slot_run ($outcome_detail, log $log)"); echo "[collapsed] $slot_run $outcome_detail (log $log)" ;;
    stopped) stopped+=("$slot_run ($outcome_detail, log $log)"); echo "[stopped] $slot_run $outcome_detail (log $log)" ;;
    *) failed+=("$slot_run ($outcome_detail, log $log)"); echo "[failed] $slot_run $outcome_detail (log $log)"; first_error "$log" ;;
  esac
  slot_pid[s]=""
  write_status real
}
progress_every=${GRID_PROGRESS_EVERY:-60} last_progress=$SECONDS
reap_runs() {  # record the runs that have exited; every $progress_every s, the others' progress
  local i running=()
  for i in "${!slots[@]}"; do
    [ -n "${slot_pid[$i]:-}" ] || continue
    if kill -0 "${slot_pid[$i]}" 2>/dev/null; then running+=("${slot_name[$i]}"); else finish_slot "$i"; fi
  done
  if (( ${#running[@]} && SECONDS - last_progress >= progress_every )); then
    last_progress=$SECONDS
    "$PYTHON" grid.py progress "$out" "${running[@]}" | sed 's/^/[progress] /'
  fi
}
busy_slots() { local i; for i in "${!slots[@]}"; do [ -n "${slot_pid[$i]:-}" ] && echo "$i"; done; }
is_running() { local i; for i in "${!slots[@]}"; do [ -n "${slot_pid[$i]:-}" ] && [ "${slot_name[$i]}" = "$1" ] && return 0; done; return 1; }
for run in "${runs[@]}"; do
  [ "$stopping" = 1 ] && break
  read_run "$run"
  if run_finished "$run_name"; then skipped+=("$run_name"); echo "[skip] $run_name (finished)"; continue; fi
  if [ -n "$starts_from" ]; then  # it starts from the model of an earlier run: wait for that one to end
    while is_running "$starts_from" && [ "$stopping" = 0 ]; do reap_runs; sleep 1; done
    [ "$stopping" = 1 ] && break
    if ! run_finished "$starts_from" && [ -z "${succeeded[$starts_from]:-}" ]; then
      failed+=("$run_name (not started: $starts_from, the run it starts from, did not finish)")
      echo "[failed] $run_name not started: $starts_from, the run it starts from, did not finish"
      continue
    fi
  fi
  # reap here, not in a subshell, so the outcome lists stay in this shell
  s=""
  while [ -z "$s" ]; do
    reap_runs
    for i in "${!slots[@]}"; do [ -z "${slot_pid[$i]:-}" ] && { s=$i; break; }; done
    [ -z "$s" ] && sleep 1
    [ "$stopping" = 1 ] && break 2
  done
  use_slot "$s"
  echo "[start] $run_name devices=${slots[$s]:-default} port=${RUN_PORT:-auto} log $out/logs/$run_name.log"
  forget_outcome "$out/$run_name"
  start_run "$out/logs/$run_name.log" "${args[@]}" --out_dir "$out" --wandb_group "$name"
  slot_pid[s]=$child slot_name[s]=$run_name child=""
  write_status real
done
while [ -n "$(busy_slots)" ]; do reap_runs; [ -n "$(busy_slots)" ] && sleep 1; done

# ---- summary and table
echo "== $name: ${#done_runs[@]} done, ${#skipped[@]} skipped, ${#failed[@]} failed, ${#stopped[@]} stopped," \
  "${#collapsed[@]} collapsed"
for f in "${failed[@]}"; do echo "  failed: $f"; done
for f in "${collapsed[@]}"; do echo "  collapsed: $f"; done
for f in "${stopped[@]}"; do echo "  stopped: $f"; done
if [ "$stopping" = 1 ]; then
  echo "run_grid: interrupted — rerun the same command to resume"
  write_status ended stopped
  rm -f "$out/.grid.pid"; exit 130
fi
write_status report
"$PYTHON" report.py "$out" || true
if [ -n "$(offline_runs)" ]; then
  echo "W&B: runs of this grid were logged offline; upload them all with:"
  echo "  bash run_grid.sh $(printf '%q' "$grid") --sync --out_dir $(printf '%q' "$out_root")"
fi
ended="done"
(( ${#failed[@]} + ${#stopped[@]} )) && ended="${#failed[@]} failed, ${#stopped[@]} stopped"
write_status ended "$ended"
rm -f "$out/.grid.pid"
[ "$ended" = "done" ]
