"""W&B on rank 0: a failure to start or log is one warning, never a stopped run."""

import netrc
import os
import urllib.parse
import uuid

import numpy as np

from config import first_line
from metrics import calibration_bins
from utils import DistInfo, atomic_write_bytes


class WandbRun:
    """W&B on rank 0. A failure to start or log is one warning, never a stopped run; a resumed
    run continues the same W&B run (its id is kept in the run folder)."""

    def __init__(self, args, config: dict, run_dir: str, info: DistInfo, log, earlier_events=()):
        """earlier_events: what a resumed run logged before its checkpoint. They are sent again:
        a killed process may not have flushed them, and W&B drops steps it already has."""
        self.run = None
        self.run_id = None
        self.log_ = log
        if not info.is_main or args.wandb == "disabled":
            return
        mode = args.wandb
        if mode == "auto" and os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
            mode = os.environ["WANDB_MODE"]
        if mode == "disabled":
            return
        if mode == "auto":
            mode = "online" if _wandb_logged_in() else "offline"
            if mode == "offline":
                log.info(
                    f"W&B: not logged in, logging offline under {os.environ.get('WANDB_DIR', run_dir)}/wandb "
                    "(upload later with `wandb sync`)"
                )
        try:
            import wandb

            id_path = os.path.join(run_dir, "wandb_id")
            run_id = open(id_path).read().strip() if os.path.exists(id_path) else uuid.uuid4().hex[:12]
            atomic_write_bytes(id_path, run_id.encode())
            kwargs = dict(
                project=args.wandb_project,
                group=args.wandb_group,
                name=args.run_name,
                id=run_id,
                resume="allow",
                dir=os.environ.get("WANDB_DIR", run_dir),
                config=config,
                tags=[os.path.basename(os.path.normpath(args.model)), args.pool],
            )
            # W&B's own variable, else a minute
            kwargs["settings"] = wandb.Settings(init_timeout=float(os.environ.get("WANDB_INIT_TIMEOUT", 60)))
            try:
                self.run = wandb.init(mode=mode, **kwargs)
            except Exception as e:
                if mode != "online":
                    raise
                log.warning(f"warning: W&B online failed ({first_line(e)}); logging offline")
                self.run = wandb.init(mode="offline", **kwargs)
            self.run_id = run_id
            self.run.define_metric("val/acc", summary="max")
            for event in earlier_events:
                self.log(event)
        except Exception as e:
            log.warning(f"warning: W&B unavailable ({first_line(e)}); continuing without it")
            self.run = None

    def log(self, event: dict) -> None:
        if self.run is None:
            return
        prefix = event.get("split", event["event"])
        values = {
            f"{prefix}/{k}": v
            for k, v in event.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
        }
        self._safe(self.run.log, values, step=event["step"])

    def summary(self, results: dict) -> None:
        if self.run is not None:
            self._safe(
                self.run.summary.update,
                {
                    **{f"test/{k[5:]}": v for k, v in results.items() if k.startswith("test_")},
                    **{k: v for k, v in results.items() if not k.startswith(("test_", "val_"))},
                },
            )

    def final_plots(
        self, probs: np.ndarray, labels: np.ndarray, texts: list[str], label_names: list[str], n_wrong: int = 20
    ) -> None:
        """Confusion matrix, reliability diagram and the most confidently wrong test examples."""
        if self.run is None:
            return

        def make():
            import wandb

            pred = probs.argmax(1)
            confidence = probs.max(1)
            reliability = wandb.Table(
                columns=["confidence", "accuracy", "count"],
                data=[list(b) for b in calibration_bins(confidence, pred == labels)],
            )
            wrong = np.flatnonzero(pred != labels)
            wrong = wrong[np.argsort(-confidence[wrong])][:n_wrong]
            examples = wandb.Table(
                columns=["text", "label", "predicted", "p_predicted"],
                data=[
                    [texts[i][:500], label_names[labels[i]], label_names[pred[i]], float(confidence[i])] for i in wrong
                ],
            )
            self.run.log(
                {
                    "test/confusion_matrix": wandb.plot.confusion_matrix(
                        y_true=labels.tolist(), preds=pred.tolist(), class_names=label_names
                    ),
                    "test/reliability": wandb.plot.line(
                        reliability, "confidence", "accuracy", title="Reliability (perfect calibration: y = x)"
                    ),
                    "test/confidently_wrong": examples,
                }
            )

        self._safe(make)

    def finish(self, exit_code: int = 0) -> None:
        if self.run is not None:
            self._safe(self.run.finish, exit_code=exit_code)
            self.run = None

    def _safe(self, fn, *args, **kwargs):
        try:
            fn(*args, **kwargs)
        except Exception as e:
            self.log_.warning(f"warning: W&B call failed ({first_line(e)}); W&B logging stops here")
            self.run = None


def _wandb_logged_in() -> bool:
    """An API key in the environment, or a netrc entry for the W&B host ($WANDB_BASE_URL for a
    self-hosted server, else api.wandb.ai)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urllib.parse.urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False
