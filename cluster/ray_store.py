"""Full training states as Ray checkpoints: the one ``StateStore`` of Ray Train workers and
Tune trials, and the one way back from a checkpoint.

``api="train"``: ``ray.train.report`` inside Ray Train workers (a barrier: every rank calls
it at the same steps; only rank 0 attaches the state). ``api="tune"``: ``ray.tune.report``
in a trial that trains in its own process. Ray keeps the checkpoints under the run's storage
and hands the newest back on a rerun of the same name, after a worker-group restart, on
``dcgan tune --resume``, or to a PBT trial exploiting another trial's state.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from dcgan.checkpoint import load_state, save_torch, with_header
from dcgan.layout import RAY_STATE_FILE


class RayStore:
    def __init__(self, api: str = "train", attach: bool = True):
        if api not in ("train", "tune"):
            raise ValueError(f"api must be train or tune (got {api!r})")
        self.api, self.attach = api, attach

    def _module(self):
        if self.api == "tune":
            from ray import tune

            return tune
        import ray.train

        return ray.train

    def save(self, state: dict[str, Any], report: dict[str, Any]) -> str:
        ray_api = self._module()
        if not self.attach:
            ray_api.report(report, checkpoint=None)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                save_torch(with_header(state), Path(tmp) / RAY_STATE_FILE)
                ray_api.report(report, checkpoint=ray_api.Checkpoint.from_directory(tmp))
        return f"{self.api} checkpoint at step {report['step']}"

    def latest(self) -> tuple[str, dict[str, Any]] | None:
        """(where from, full state) of the checkpoint Ray hands this process, if any."""
        checkpoint = self._module().get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as directory:
            return f"{self.api} checkpoint", load_state(Path(directory) / RAY_STATE_FILE)
