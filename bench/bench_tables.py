"""The benchmark's tables: one line per side, one per run, our loop against a bare step; and the
line each run prints when it ends."""


def run_line(name: str, row: dict) -> str:
    return f"[{name}] train {row['samples_per_s']:.2f} samples/s, {score_text(row)}, {memory_text(row)}"


def score_text(row: dict) -> str:
    return f"val_loss {row['val_loss']:.4f}" if "val_loss" in row else f"test_acc {row['test_acc']:.4f}"


def memory_text(row: dict) -> str:
    if "peak_mem_allocated_mb" in row:
        return f"{row['peak_mem_allocated_mb']:.0f} / {row['peak_mem_reserved_mb']:.0f}"
    return f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "n/a"


def _mean_std(row: dict, key: str) -> str:
    std = row.get(f"{key}_std")
    return f"{row[key]:.4f}" + (f" ± {std:.4f}" if std is not None else "")


def _gflops(tflops: float, share: float) -> str:
    return f"{tflops * 1e3:.1f} ({100 * share:.0f}%)"


def _paired_eval(bare: dict) -> str:
    e = bare.get("eval")
    if not e:
        return ""
    rounds = ", ".join(f"{x:.2f}x" for x in e["round_ratios"])
    return f"{e['samples_per_s']:.1f} vs {e['trainer_samples_per_s']:.1f}: {e['ratio']:.2f}x ({rounds})"


def print_tables(rows: list[dict], machine: dict, work: dict) -> None:
    """The classification tables: one line per side, one per run, one per variant's loop against
    its bare step; a warning where the sides' batch sizes differ."""
    peak = machine["matmul_peak_flops"] / 1e9
    memory = "peak MiB allocated / reserved" if "gpu" in machine else "peak RSS MiB"
    _side_table(rows, work, peak, memory)
    _run_table(rows, memory)
    bare_rows = [r for r in rows if "bare_step" in r]
    if bare_rows:
        _bare_step_table(bare_rows, peak)
    batch_sizes = {(r["side"], r["train_batch_size"], r["eval_batch_size"]) for r in rows}
    if len({(t, e) for _, t, e in batch_sizes}) > 1:
        print(
            "\nwarning: the sides did not use the same batch sizes (side, train, eval): "
            + "; ".join(map(str, sorted(batch_sizes)))
        )


def _side_table(rows: list[dict], work: dict, peak: float, memory: str) -> None:
    seeds = work["seeds"]
    over = f"median of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    print(
        f"\nthroughput: {over}; test acc / loss: "
        + ("mean ± std (n-1) over seeds" if len(seeds) > 1 else f"seed {seeds[0]}")
        + f"; eval batch {work['eval_batch_size']}; {memory}: the largest of the runs"
    )
    print(
        f"\n| side | train samples/s | epoch samples/s | real tokens/s | padding | useful GFLOP/s (% of {peak:.0f} "
        f"peak) | loop / bare step | eval samples/s | test acc | test loss | {memory} | "
        "vs Trainer: speed, acc [95% CI] |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seeds_text = f" ({', '.join(f'{x:.2f}' for x in r['samples_per_s_seeds'])})" if len(seeds) > 1 else ""
        bare = f"{100 * r['bare_share']:.0f}%" if "bare_share" in r else ""
        ev = f"{r['eval_samples_per_s']:.1f}" + (f" ({r['eval_ratio']:.2f}x)" if "eval_ratio" in r else "")
        ratio = f"{r['speedup']:.2f}x, {r['acc_diff_points']:+.1f} pts" if "speedup" in r else ""
        if "acc_diff_ci95_points" in r:
            ratio += " [{:+.1f}, {:+.1f}]".format(*r["acc_diff_ci95_points"])
        print(
            f"| {r['side']} | {r['samples_per_s']:.2f}{seeds_text} | {r['epoch_samples_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {100 * r['padding_share']:.0f}% | "
            f"{_gflops(r['tflops_per_s'], r['useful_peak_share'])} | {bare} | {ev} | {_mean_std(r, 'test_acc')} | "
            f"{_mean_std(r, 'test_loss')} | {memory_text(r)} | {ratio} |"
        )
    if any("acc_diff_ci95_points" in r for r in rows):
        print(
            "\nacc vs Trainer: difference of the mean test accuracies in points, with a 95% CI that "
            "resamples each side's seeds and the shared test examples (report.py's bootstrap); a CI "
            "from one seed a side sees only test-set noise"
        )


def _run_table(rows: list[dict], memory: str) -> None:
    print(
        f"\n| side | seed | train samples/s (slices) | epoch samples/s | eval samples/s | test acc | test loss | "
        f"{memory} | vs Trainer, same seed |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        for run in r["per_seed"]:
            slices = ", ".join(f"{x:.1f}" for x in run["samples_per_s_slices"])
            ratio = (
                f"{run['speedup']:.2f}x, {run['acc_diff_points']:+.1f} pts, eval {run['eval_ratio']:.2f}x"
                if "speedup" in run
                else ""
            )
            print(
                f"| {r['side']} | {run['seed']} | {run['samples_per_s']:.2f} ({slices}) | "
                f"{run['epoch_samples_per_s']:.2f} | {run['eval_samples_per_s']:.1f} | {run['test_acc']:.4f} | "
                f"{run['test_loss']:.4f} | {memory_text(run)} | {ratio} |"
            )


def _bare_step_table(bare_rows: list[dict], peak: float) -> None:
    b0 = bare_rows[0]["bare_step"]
    print(
        f"\nloop step vs bare step (forward, backward, optimizer step on the same batch, collated "
        f"beforehand), paired in one process on {b0['steps']} of the seed-{b0['seed']} run's "
        f"{b0['of_steps']} first-epoch steps"
    )
    print(
        f"\n| side | bare step samples/s (slices) | bare useful GFLOP/s (% of {peak:.0f} peak) | "
        "loop samples/s | loop / bare step (slices; bare step after / before the loop's) | "
        "loop ms per step (medians): all ≈ collate + forward/backward + optimizer step + rest | "
        "bare step ms | eval samples/s, ours vs Trainer's predict (rounds) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in bare_rows:
        b, ms = r["bare_step"], r["bare_step"]["loop_ms"]
        slices = ", ".join(f"{x:.1f}" for x in b["samples_per_s_slices"])
        shares = ", ".join(f"{100 * x:.0f}%" for x in b["loop_share_slices"])
        shares += "; " + ", ".join(
            f"{order.replace('_', ' ')} {100 * x:.0f}%" for order, x in b["loop_share_by_order"].items()
        )
        print(
            f"| {r['side']} | {b['samples_per_s']:.2f} ({slices}) | "
            f"{_gflops(b['tflops_per_s'], b['useful_peak_share'])} | {b['loop_samples_per_s']:.2f} | "
            f"{100 * b['loop_share']:.1f}% ({shares}) | {ms['step']:.1f} ≈ {ms['collate']:.2f} + "
            f"{ms['forward_backward_without_collate']:.1f} + {ms['optimizer_step']:.1f} + {ms['rest']:.2f} | "
            f"{ms['bare_step']:.1f} | {_paired_eval(b)} |"
        )


def _vs_trainer_mlm(r: dict) -> str:
    if "speedup" not in r:
        return ""
    memory = f", memory {r['memory_ratio']:.2f}x" if "memory_ratio" in r else ""
    return f"{r['speedup']:.2f}x, val loss {r['val_loss_diff']:+.4f}{memory}"


def print_mlm_tables(rows: list[dict], machine: dict, work: dict) -> None:
    """The masked-LM tables: one line per side, then one per run."""
    peak = machine["matmul_peak_flops"] / 1e9
    memory = "peak MiB allocated / reserved" if "gpu" in machine else "peak RSS MiB"
    seeds = work["seeds"]
    over = f"median of seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    print(
        f"\nmasked LM, mlm_prob {work['mlm_prob']}, {'packed blocks' if work['pack'] else 'one example per text'}"
        f" ({work['n_texts']} texts -> {work['n_train']} examples, {work['train_tokens_per_epoch']} real tokens per "
        f"epoch); throughput: {over}; val loss / acc: per masked token on the same {work['n_val']} held-out "
        f"examples and the same fixed masks (train.py's), after the last epoch"
        + (", mean ± std (n-1) over seeds" if len(seeds) > 1 else "")
        + f"; {memory}: the largest of the runs"
    )
    print(
        f"\n| side | train samples/s | epoch samples/s | real tokens/s | padding | useful GFLOP/s (% of {peak:.0f} "
        f"peak) | examples / real tokens trained | val loss | val acc | val perplexity | {memory} | "
        "vs Trainer: speed, val loss, memory |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        seeds_text = f" ({', '.join(f'{x:.2f}' for x in r['samples_per_s_seeds'])})" if len(seeds) > 1 else ""
        print(
            f"| {r['side']} | {r['samples_per_s']:.2f}{seeds_text} | {r['epoch_samples_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {100 * r['padding_share']:.0f}% | "
            f"{_gflops(r['tflops_per_s'], r['useful_peak_share'])} | {r['trained_examples']} / "
            f"{r['trained_tokens']:.0f} | {_mean_std(r, 'val_loss')} | {_mean_std(r, 'val_acc')} | "
            f"{r['val_perplexity']:.2f} | {memory_text(r)} | {_vs_trainer_mlm(r)} |"
        )
    print(
        f"\n| side | seed | train samples/s (slices) | epoch samples/s | val loss | val acc | {memory} | "
        "vs Trainer, same seed |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for run in r["per_seed"]:
            slices = ", ".join(f"{x:.1f}" for x in run["samples_per_s_slices"])
            print(
                f"| {r['side']} | {run['seed']} | {run['samples_per_s']:.2f} ({slices}) | "
                f"{run['epoch_samples_per_s']:.2f} | {run['val_loss']:.4f} | {run['val_acc']:.4f} | "
                f"{memory_text(run)} | {_vs_trainer_mlm(run)} |"
            )
