"""Refusals of the inference service, in the annotation backend's error shape.

The backend answers a refusal with its bare code in `detail` (its own tests compare with `==`, e.g.
`sam3_checkpoint_path_invalid`); this service adds the sentence a person needs (what is wrong, what to do) in
`message`. A refusal without a code answers the sentence in both.
"""

from __future__ import annotations


class ServiceError(ValueError):
    """A request the service refuses: HTTP `status`, the backend's bare `code` (or None), the sentence."""

    def __init__(self, message: str, status: int = 400, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def body(self) -> dict[str, str]:
        """The JSON answer: {"detail": code or sentence, "message": sentence}."""
        return {"detail": self.code or str(self), "message": str(self)}


SAM3_VARIANTS = ("sam3",)


def check_variant(variant: str | None) -> None:
    """Accept a request's `sam_variant` when it names SAM3 (null, "sam3", or "sam3@<runtime>", as the backend's
    runtime suffix); any other variant is one this service does not have: 400 `sam_variant_unavailable:<v>`."""
    if variant is None or variant.partition("@")[0].strip().lower() in SAM3_VARIANTS:
        return
    raise ServiceError(
        f"sam_variant {variant!r} is not served here: this service runs box-only SAM3 only; send sam_variant "
        f"'sam3' (or leave it out)",
        code=f"sam_variant_unavailable:{variant}",
    )
