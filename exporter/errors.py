"""Errors a user can act on, each with the exit code the CLI returns for it.

Anything else that escapes is a bug and exits with INTERNAL_ERROR.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INTERNAL_ERROR = 1
    USAGE = 2  # bad flags (also what typer/click return for a malformed command line)
    BAD_INPUT = 3  # checkpoint, recipe or option values that cannot be used
    OUTPUT_ERROR = 4  # output exists (without --force) or cannot be written
    PARITY_FAILED = 5  # the exported model does not compute what PyTorch computes
    VERIFY_FAILED = 6  # a saved artifact does not match its manifest
    STAGE_FAILED = 7  # a tool a stage wraps failed (exporter, simplifier, runtime)
    NO_ENGINE = 8  # TensorRT: the portable half was written, but no engine could be built here
    ENGINE_REQUIRED = 9  # TensorRT with --require-engine: no engine could be built here; nothing was written
    PUBLISH_REFUSED = 10  # publish: the package may not be published (gates, random weights, version taken)
    PUBLISH_FAILED = 11  # publish or pull: the registry failed (unreachable, denied, upload did not verify)
    NOT_IN_REGISTRY = 12  # pull: the registry, model, version or target asked for is not there
    INTERRUPTED = 130  # Ctrl-C (SIGINT): 128 + 2, as a shell reports it
    TERMINATED = 143  # SIGTERM (a CI timeout, kill): 128 + 15


class EfexportError(Exception):
    """Base class: a message for the user and the process exit code."""

    exit_code: ExitCode = ExitCode.INTERNAL_ERROR
    stage: str | None = None  # set by the pipeline to the stage that raised it


class UsageError(EfexportError):
    exit_code = ExitCode.USAGE


class CheckpointError(EfexportError):
    exit_code = ExitCode.BAD_INPUT


class RecipeError(EfexportError):
    exit_code = ExitCode.BAD_INPUT


class InputSpecError(EfexportError):
    exit_code = ExitCode.BAD_INPUT


class OutputError(EfexportError):
    exit_code = ExitCode.OUTPUT_ERROR


class ParityError(EfexportError):
    exit_code = ExitCode.PARITY_FAILED


class VerifyError(EfexportError):
    exit_code = ExitCode.VERIFY_FAILED


class StageError(EfexportError):
    exit_code = ExitCode.STAGE_FAILED


class PublishRefused(EfexportError):
    exit_code = ExitCode.PUBLISH_REFUSED


class PublishError(EfexportError):
    exit_code = ExitCode.PUBLISH_FAILED


class NotInRegistry(EfexportError):
    exit_code = ExitCode.NOT_IN_REGISTRY
