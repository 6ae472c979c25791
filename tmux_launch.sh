#!/usr/bin/env bash
# Run a grid inside a detached tmux session, so it survives a dropped SSH connection.
#
#   bash tmux_launch.sh [GRID] [run_grid.sh options]   start (session "grid-<name>"; output teed
#                                                      to <out_dir>/<name>/grid.log)
#   bash tmux_launch.sh --status [--out_dir D]         sessions and their progress (runs done / total,
#                                                      phase, each running run's step, epoch, ETA),
#                                                      how the grids under D (default runs) ended, and
#                                                      the state of those sent to SLURM with
#                                                      run_grid.sh --slurm
#   bash tmux_launch.sh --stop GRID                    stop gracefully: running runs checkpoint and
#                                                      exit; start again to resume
#   bash tmux_launch.sh GRID -- --epochs 1             flags after -- go to every run (as run_grid.sh)
set -uo pipefail
cd "$(dirname "$0")" || exit 2
# shellcheck source=grid_lib.sh
source ./grid_lib.sh
case "${1:-}" in
  -h|--help) print_usage "$0"; exit 0 ;;
esac
command -v tmux >/dev/null || die "tmux is not installed (e.g. apt-get install tmux)"
PYTHON=${PYTHON:-python}
load_defaults

session_of() { local n; n=$(basename "$1" .grid); echo "grid-${n//[^A-Za-z0-9_-]/_}"; }
sessions() { tmux list-sessions -F '#{session_name}' 2>/dev/null | grep '^grid-' || true; }

progress() {  # $1 = session: "done/total" from the grid file, its extra flags and its run folders
  local grid out extra=() total finished_count
  grid=$(tmux show-options -t "$1" -v @grid_file 2>/dev/null) out=$(tmux show-options -t "$1" -v @grid_out 2>/dev/null)
  IFS=$'\x1f' read -r -a extra < <(tmux show-options -t "$1" -v @grid_extra 2>/dev/null)
  if expand_runs "$grid" "${extra[@]}" 2>/dev/null; then total=${#runs[@]}; else total="?"; fi
  finished_count="?"
  if load_finished "$grid" "$out" "${extra[@]}" 2>/dev/null; then finished_count=${#finished[@]}; fi
  echo "$finished_count/$total runs done  (grid $grid, log $out/grid.log)"
}

case "${1:-}" in
  --status)
    root=$DEFAULT_OUT_ROOT
    if [ "${2:-}" = --out_dir ]; then root=${3:-$DEFAULT_OUT_ROOT}; fi
    list=$(sessions) shown=()
    for s in $list; do
      echo "$s: $(progress "$s")"
      out=$(tmux show-options -t "$s" -v @grid_out 2>/dev/null) && shown+=("$(realpath -m "$out")")
      # the phase and each running run's step/total, epoch and ETA (grid.status)
      "$PYTHON" grid.py status "$out" | sed 's/^/  /'
    done
    # the grids under $root that no session runs now: how they ended (or that they run outside
    # tmux), and those sent to SLURM; grid.py reads their status files, all in one format
    others=()
    for d in "$root"/*/; do
      [[ " ${shown[*]:-} " == *" $(realpath -m "$d") "* ]] || others+=("${d%/}")
    done
    statuses=""
    if [ ${#others[@]} -gt 0 ]; then statuses=$("$PYTHON" grid.py status "${others[@]}"); fi
    [ -n "$list" ] || [ -n "$statuses" ] || echo "no grid sessions running"
    [ -z "$statuses" ] || echo "$statuses"
    exit 0 ;;
  --stop)
    [ $# -ge 2 ] || die "--stop needs the grid (file or name)"
    s=$(session_of "$2")
    tmux has-session -t "=$s" 2>/dev/null || die "no session $s (see --status)"
    out=$(tmux show-options -t "$s" -v @grid_out)
    launched=$(tmux show-options -t "$s" -v @grid_launch 2>/dev/null || echo "$2")
    pid=$(cat "$out/.grid.pid" 2>/dev/null) || die "grid of $s has not started its runs yet; try again"
    echo "stopping $s: running runs checkpoint, then exit..."
    kill -TERM "$pid"
    for _ in $(seq 1 120); do tmux has-session -t "=$s" 2>/dev/null || break; sleep 1; done
    tmux has-session -t "=$s" 2>/dev/null && die "$s still running after 120 s; attach with: tmux attach -t $s"
    echo "stopped; $(tail -n 1 "$out/grid.log")"
    echo "resume with: bash tmux_launch.sh $launched"
    exit 0 ;;
esac

grid=$DEFAULT_GRID out_root=$DEFAULT_OUT_ROOT args=() extra=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out_dir) need_value "$@"; out_root=$2; args+=("$1" "$2"); shift 2 ;;
    --nproc|--gpus) need_value "$@"; args+=("$1" "$2"); shift 2 ;;
    --) args+=("$@"); extra=("${@:2}"); break ;;
    -*) args+=("$1"); shift ;;
    *) grid=$1; shift ;;
  esac
done
[ -f "$grid" ] || die "grid file $grid not found"
s=$(session_of "$grid")
tmux has-session -t "=$s" 2>/dev/null && die "session $s is already running this grid (attach: tmux attach -t $s)"
name=$("$PYTHON" grid.py name "$grid") || exit 2
out="$out_root/$name"
mkdir -p "$out"
cmd="bash run_grid.sh $(printf '%q ' "$grid" "${args[@]}")2>&1 | tee -a $(printf '%q' "$out/grid.log"); \
echo \"grid exited with status \${PIPESTATUS[0]}\" | tee -a $(printf '%q' "$out/grid.log")"
tmux new-session -d -s "$s" -c "$PWD" "bash -c $(printf '%q' "$cmd")" || die "tmux could not start session $s"
tmux set-option -t "$s" @grid_file "$grid" >/dev/null
tmux set-option -t "$s" @grid_out "$out" >/dev/null
tmux set-option -t "$s" @grid_extra "$( (( ${#extra[@]} )) && printf '%s\x1f' "${extra[@]}")" >/dev/null  # for --status
tmux set-option -t "$s" @grid_launch "$(printf '%q ' "$grid" "${args[@]}")" >/dev/null
echo "started grid $grid in tmux session $s (detached; it keeps running if you log out)"
echo "  follow:   tail -f $out/grid.log"
echo "  attach:   tmux attach -t $s     (detach again: Ctrl-b d)"
echo "  progress: bash tmux_launch.sh --status"
echo "  stop:     bash tmux_launch.sh --stop $grid"
