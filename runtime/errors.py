"""Errors a user can act on.

Every problem caused by input (an image, a bundle, a checkpoint, a missing package) is raised as a
`ZsadEdgeError` whose message names the problem and what to do about it. The CLIs print that one
line and exit non-zero instead of showing a library traceback.
"""


class ZsadEdgeError(Exception):
    """Base class: the message is complete and meant for the user."""


class ImageReadError(ZsadEdgeError):
    """An input image is missing, empty, corrupt or of an unsupported layout."""


class BundleError(ZsadEdgeError):
    """An engine bundle is missing, tampered with, incomplete or of an unsupported schema."""


class BackendUnavailableError(ZsadEdgeError):
    """The requested inference backend (package or execution provider) is not available."""


class ModelLoadError(ZsadEdgeError):
    """Model weights could not be found, downloaded or matched to the architecture."""


class ParityError(ZsadEdgeError):
    """An exported graph disagrees with its PyTorch reference beyond tolerance."""


class ServerUnavailableError(ZsadEdgeError):
    """The inference server a remote detector uses cannot be reached (down, restarting, unreachable)."""
