# shellcheck shell=bash
# The grid launcher's bash, written once: run_grid.sh and tmux_launch.sh source it, and so do the
# SLURM jobs slurm.py writes from slurm_jobs/*.sbatch. It reads grid lines, asks grid.py which runs
# are finished (config.finished decides), starts a run, waits until it has really exited, asks
# grid.py how it ended, shows its first error lines, and runs the smoke phase (grid.py says which
# smoke runs it skips).
#
# The caller sets PYTHON and, to start runs, OUT (the grid's folder) and:
#   PROCS_PER_NODE     processes per run and node, under torchrun
#   PLAIN_ONE_PROCESS  1: a one-process run starts as plain python, without torchrun's start-up
#   NODES              nodes per run; above 1, srun starts one torchrun per node (SLURM only)
#   SRUN_CPUS          CPUs per node for srun, which does not inherit them (empty: SLURM's default)
#   RUN_PORT           a fixed rendezvous port on this machine (run_grid.sh --gpus); empty: torchrun
#                      picks a free one
#   RUN_DEVICES        CUDA_VISIBLE_DEVICES for the run; empty: the devices it sees

die() { echo "error: $*" >&2; exit 2; }

print_usage() {  # $1 = script: its --help, the comment block under its #! line, whole
  sed -n '1d; /^#/!q; s/^# \{0,1\}//p' "$1"
}

need_value() {  # $1 = option, $2 = what follows it (if anything): an option is not its value
  { [ $# -ge 2 ] && [[ "$2" != -* ]]; } || die "$1 needs a value"
}

load_defaults() {  # sets DEFAULT_GRID and DEFAULT_OUT_ROOT: grid.py holds them, for slurm.py too
  # shellcheck disable=SC2034  # for the caller
  read -r DEFAULT_GRID DEFAULT_OUT_ROOT < <("$PYTHON" grid.py defaults)
  [ -n "${DEFAULT_OUT_ROOT:-}" ] || die "$PYTHON grid.py defaults failed (is $PYTHON the toolkit's Python?)"
}

expand_runs() {  # $1 = grid file, the rest = train.py args added to every run; sets runs[], one line each
  local expanded
  expanded=$("$PYTHON" grid.py expand "$1" -- "${@:2}") || return 2
  mapfile -t runs <<< "$expanded"
}

read_run() {  # $1 = one line of runs[]; sets line_no, run_name, starts_from (the run whose model it
  # starts from, --model run:NAME, or empty) and args (the run's train.py args)
  local fields
  IFS=$'\x1f' read -r -a fields <<< "$1"
  # shellcheck disable=SC2034  # for the caller
  line_no=${fields[0]} run_name=${fields[1]} starts_from=${fields[2]} args=("${fields[@]:3}")
}

load_finished() {  # $1 = grid file, $2 = its folder, the rest = extra train.py args; sets finished[run name]=1.
  # grid.py refuses (exit 2, one error line) a run folder that holds a run with other settings
  local names name
  names=$("$PYTHON" grid.py finished "$1" "$2" -- "${@:3}") || return 2
  declare -gA finished=()
  while IFS= read -r name; do
    # shellcheck disable=SC2034  # for the caller
    if [ -n "$name" ]; then finished[$name]=1; fi
  done <<< "$names"
}

run_finished() {  # $1 = run name: whether load_finished found it finished
  [ -n "${finished[$1]:-}" ]
}

launcher_words() {  # the words that start train.py as the variables above say, one per line
  if [ "${NODES:-1}" -gt 1 ]; then
    local head port
    head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)  # rendezvous on the first node
    port=$((20000 + SLURM_JOB_ID % 20000))  # from the job id: two jobs sharing a node differ
    printf '%s\n' srun "--nodes=$NODES" --ntasks-per-node=1 ${SRUN_CPUS:+"--cpus-per-task=$SRUN_CPUS"} \
      --kill-on-bad-exit=1 "$PYTHON" -m torch.distributed.run "--nnodes=$NODES" "--nproc_per_node=$PROCS_PER_NODE" \
      --rdzv-backend=c10d "--rdzv-endpoint=$head:$port" "--rdzv-id=$SLURM_JOB_ID" train.py
  elif [ "$PROCS_PER_NODE" = 1 ] && [ "${PLAIN_ONE_PROCESS:-0}" = 1 ]; then
    printf '%s\n' "$PYTHON" train.py
  elif [ -n "${RUN_PORT:-}" ]; then
    printf '%s\n' "$PYTHON" -m torch.distributed.run --nnodes=1 "--nproc_per_node=$PROCS_PER_NODE" \
      --rdzv-backend=c10d "--rdzv-endpoint=localhost:$RUN_PORT" train.py
  else
    printf '%s\n' "$PYTHON" -m torch.distributed.run --standalone "--nproc_per_node=$PROCS_PER_NODE" train.py
  fi
}

start_run() {  # $1 = log file, or - for this script's own output; the rest = train.py args.
  # Starts the run in the background; child = its pid
  local log=$1 words
  shift
  mapfile -t words < <(launcher_words)
  if [ -n "${RUN_DEVICES:-}" ]; then words=(env "CUDA_VISIBLE_DEVICES=$RUN_DEVICES" "${words[@]}"); fi
  if [ "$log" = - ]; then
    "${words[@]}" "$@" &
  else
    "${words[@]}" "$@" > "$log" 2>&1 &
  fi
  child=$!
}

exit_status_of() {  # $1 = pid: wait until it has really exited (a trapped signal ends `wait` early)
  local status again
  wait "$1"; status=$?
  while kill -0 "$1" 2>/dev/null; do wait "$1"; status=$?; done
  # it may have exited between an interrupted wait and kill -0: bash then still holds its status
  wait "$1" 2>/dev/null; again=$?
  [ "$again" != 127 ] && status=$again
  return "$status"
}

write_status_file() {  # $1 = file, the rest = its lines, "KEY VALUE" each: a grid's status, in the
  # one format of the grid runner's grid.status and the SLURM jobs' slurm/status/<task | smoke>:
  # phase (smoke | real | report | ended), ended (how), running (a run; one line each), note (what
  # else to say), and the runner's pid, grid and counts. grid.py read_status reads it, for
  # tmux_launch.sh --status and run_grid.sh --slurm --status. Replaced whole: never read half-written
  printf '%s\n' "${@:2}" > "$1.tmp" && mv -f "$1.tmp" "$1"
}

forget_outcome() {  # $1 = run folder: before a start, drop the outcome.json an earlier start left
  # (train.py writes it when a signal stops the run), so run_outcome reads this start's
  rm -f "$1/outcome.json"
}

run_outcome() {  # $1 = run folder, $2 = its start's exit status: sets outcome (done | stopped | failed)
  # and outcome_detail (what to show), as grid.py outcome decides
  local line
  line=$("$PYTHON" grid.py outcome "$1" "$2") || line="failed exit $2"
  # shellcheck disable=SC2034  # for the caller
  read -r outcome outcome_detail <<< "$line"
}

first_error() {  # $1 = log: its error lines (train.py can report model and data together), else its last lines
  { grep -m 3 -E '^([0-9:]+ )?error:' "$1" || grep -v '^\s*$' "$1" | tail -n 8; } | sed 's/^/    /'
}

smoke_phase() {  # $1 = the grid file, the rest = the train.py args added to every run (as for
  # expand_runs). Runs every run of runs[] with --smoke --fresh (64 examples, 1 epoch) into
  # $OUT/smoke, one after another, its log $OUT/logs/<run>-smoke.log, except those whose smoke run
  # grid.py smoke-skips says is not needed. Returns 0 when all passed; 1 at the first failure, after
  # printing its error lines (line_no, run_name and smoke_log name it); 2 when grid.py refused the
  # grid (its error line on stderr); 130 once a signal handler has set stopping=1
  local run status skips skipped why
  local -A skip=()
  skips=$("$PYTHON" grid.py smoke-skips "$1" "$OUT" -- "${@:2}") || return 2
  while IFS=$'\x1f' read -r skipped why; do
    if [ -n "$skipped" ]; then skip[$skipped]=$why; fi
  done <<< "$skips"
  for run in "${runs[@]}"; do
    [ "${stopping:-0}" = 1 ] && return 130
    read_run "$run"
    if [ -n "${skip[$run_name]:-}" ]; then echo "smoke skipped: $run_name (${skip[$run_name]})"; continue; fi
    smoke_log="$OUT/logs/$run_name-smoke.log"
    # --fresh: a smoke run that is not skipped starts over; a finished one would only be skipped by
    # train.py, and one with other settings or from an earlier model of its stage refused
    start_run "$smoke_log" "${args[@]}" --smoke --fresh --out_dir "$OUT/smoke"
    exit_status_of "$child"; status=$?
    child=""
    [ "${stopping:-0}" = 1 ] && return 130
    if [ "$status" != 0 ]; then
      echo "smoke FAILED: $1 line $line_no ($run_name), log $smoke_log:" >&2
      first_error "$smoke_log" >&2
      return 1
    fi
    echo "smoke ok: $run_name"
  done
  return 0
}
