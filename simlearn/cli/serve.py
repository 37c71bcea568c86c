"""``simlearn-serve ckpt_path=PATH [gallery=split:test|FOLDER|NPZ|DB] [port=8000]``: a search service and its page."""

from __future__ import annotations

from omegaconf import DictConfig

from simlearn.cli.common import hydra_command
from simlearn.errors import UserError

#: the modules of the ``serve`` extra (pip install "simlearn[serve]")
SERVE_EXTRA = {"fastapi", "uvicorn", "starlette", "multipart", "python_multipart"}


# The service writes no results, and its run dir's copies of the command line could hold the access token: it claims
# no run dir (the gallery cache goes to cache_dir, as for simlearn-search).
@hydra_command("serve", claims_run_dir=False)
def main(cfg: DictConfig) -> None:
    # serve() checks the address and the token before it imports torch and FastAPI (a refused host=0.0.0.0 is
    # answered at once); without the serve extra, that import is one line, not a traceback
    from simlearn.serve.server import serve

    try:
        serve(cfg)
    except ModuleNotFoundError as error:
        if (error.name or "").split(".")[0] not in SERVE_EXTRA:
            raise
        raise UserError(
            f"simlearn-serve needs the serve extra, and {error.name} is not installed: pip install 'simlearn[serve]'."
        ) from None


if __name__ == "__main__":
    main()
