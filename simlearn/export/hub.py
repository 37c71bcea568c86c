"""Pushing a model folder to the Hugging Face Hub (``simlearn-export format=hf push_to_hub=user/name``)."""

from __future__ import annotations

from pathlib import Path

import simlearn
from simlearn.errors import UserError

__all__ = ["check_repo_id", "push_to_hub"]


def check_repo_id(repo_id: str) -> None:
    """A Hub repository id (``user/name``) that cannot be one, as a :class:`UserError` (before anything is written)."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError as error:
        raise UserError(f"push_to_hub needs huggingface_hub ({error}); pip install 'simlearn[hub]'.") from error
    try:
        validate_repo_id(str(repo_id))
    except HFValidationError as error:
        raise UserError(f"push_to_hub={repo_id!r} is not a Hub repository id like user/name ({error}).") from error
    if "/" not in str(repo_id):
        raise UserError(f"push_to_hub={repo_id!r} needs a namespace: user/name or organisation/name.")


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True, token: str | None = None) -> str:
    """Upload ``folder`` to the Hub model repository ``repo_id`` (created when missing, private unless told) and
    return its URL. Offline (``HF_HUB_OFFLINE``), without credentials or when the Hub cannot be reached: a
    :class:`UserError` that says so and where the folder is kept."""
    check_repo_id(repo_id)
    from huggingface_hub import HfApi, constants, get_token

    kept = f"the model folder is kept at {folder}; push it later with `hf upload {repo_id} {folder}`"
    if constants.HF_HUB_OFFLINE:
        raise UserError(f"cannot push to the Hugging Face Hub: HF_HUB_OFFLINE is set; {kept}.")
    try:
        token = token or get_token()
    except Exception as error:  # an OIDC token exchange (HF_OIDC_RESOURCE) that failed
        raise UserError(f"cannot push to the Hugging Face Hub: no usable credentials ({error}); {kept}.") from error
    if not token:
        raise UserError(
            f"cannot push to the Hugging Face Hub: no credentials (set HF_TOKEN or run `hf auth login`); {kept}."
        )
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            folder_path=str(folder),
            repo_id=repo_id,
            repo_type="model",
            commit_message=f"simlearn-export format=hf (simlearn {simlearn.__version__})",
        )
    except Exception as error:  # no network, a rejected token, no write access: all said in one line
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UserError(f"could not push to the Hugging Face Hub repository {repo_id} ({first}); {kept}.") from error
    return str(getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo_id}")
