"""Execute one analysis notebook: jupytext percent-format source -> executed .ipynb.

The pipeline's figure and table rules call this through ``tom notebook``: the source is read
with jupytext, executed by papermill with the given parameters plus ``commit`` (the commit of
the checkout the notebook lives in, so every figure names the code that made it), and the
executed notebook is renamed into place only when it ran to the end.

The kernel talks to papermill over Unix sockets in the notebook's own temporary directory,
not over TCP ports on localhost: kernels started at the same moment (the pipeline runs its
notebook rules in parallel) can pick the same free port, and then one dies on start with
"Address already in use" and its rule hangs (papermill issue 511; it hung the pipeline in a
SLURM test here).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tom.outputs import git_commit


def run_notebook(source: Path, output: Path, parameters: dict[str, Any],
                 kernel: str = "python3") -> None:
    """Run ``source`` (a jupytext .py) with ``parameters``; write the executed ``output``."""
    import jupytext
    import papermill

    source, output = Path(source), Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    parameters = {**parameters, "commit": git_commit(source)}
    with tempfile.TemporaryDirectory(prefix="tom-notebook-") as tmp:
        notebook = Path(tmp) / f"{source.stem}.ipynb"
        jupytext.write(jupytext.read(source), notebook)
        executed = output.parent / f".{output.name}.running"
        try:
            papermill.execute_notebook(str(notebook), str(executed), parameters=parameters,
                                       kernel_name=kernel, cwd=".", progress_bar=False,
                                       log_output=True,
                                       kernel_manager_class=_unix_socket_kernels(Path(tmp)))
            executed.replace(output)
        finally:
            executed.unlink(missing_ok=True)


def _unix_socket_kernels(directory: Path) -> type:
    """A jupyter_client KernelManager whose kernel listens on Unix sockets in ``directory``
    (its connection file there too) instead of TCP ports."""
    from jupyter_client.manager import KernelManager

    class UnixSocketKernelManager(KernelManager):
        def __init__(self, **kwargs: Any) -> None:
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("connection_file", str(directory / "kernel.json"))
            super().__init__(**kwargs)

    return UnixSocketKernelManager
