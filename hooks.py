"""Where tests and the benchmark reach into the training loop: the methods of a Hooks object,
passed as train.main(argv, hooks=...), run at step, evaluation-batch and epoch boundaries, never
inside a step; the base class does nothing. The crash tests' faults come in this way
(tests/faults.py)."""


class Hooks:
    def before_step(self, run, state, micro_batches: list) -> None:
        """Before an optimizer step's forward and backward passes; micro_batches holds this
        rank's example indices, as the step will cut them."""

    def after_forward_backward(self, run, state, figures: dict) -> None:
        """After the step's backward passes and its all-reduce (a host sync), before the optimizer
        step. The figures (loss, samples, tokens, positions, flops, signal) may be changed."""

    def after_step(self, run, state, figures: dict) -> None:
        """The step is taken, counted (state.global_step) and logged; before the loop checks for a
        stop signal and takes any checkpoint."""

    def after_eval_batch(self, run, split: str) -> None:
        """An evaluation batch of split ("val", "test") scored, before the stop-signal check."""

    def before_validation(self, run, state) -> None:
        """An epoch's last step done, before its validation."""
