"""Input models of the built-in tools. Their shapes match the built-in tools of Anthropic's managed
agents, so a session's ``tool_use`` input can be passed straight through."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BashInput(_Input):
    """Input of the ``bash`` tool."""

    command: str | None = Field(
        default=None, description="The shell command to run (may span several lines)."
    )
    timeout_ms: int | None = Field(
        default=None,
        gt=0,
        description="Kill the command after this many milliseconds (the tool's description gives "
        "the default and the maximum).",
    )
    restart: bool | None = Field(
        default=None,
        description="Start a fresh shell (working directory and variables reset) before running "
        "the command, if any.",
    )


class ReadInput(_Input):
    """Input of the ``read`` tool."""

    file_path: str = Field(
        description="Path of the file to read (absolute, or relative to the working directory)."
    )
    view_range: list[int] | None = Field(
        default=None,
        min_length=2,
        max_length=2,
        description="[start, end] line numbers to show, 1-based and inclusive; end -1 means the "
        "end of the file. Default: the whole file.",
    )

    @field_validator("view_range")
    @classmethod
    def _check_range(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        start, end = value
        if start < 1:
            raise ValueError("start must be >= 1")
        if end != -1 and end < start:
            raise ValueError("end must be >= start, or -1 for the end of the file")
        return value


class WriteInput(_Input):
    """Input of the ``write`` tool."""

    file_path: str = Field(description="Path of the file to create or overwrite.")
    content: str = Field(description="The complete new content of the file.")


class EditInput(_Input):
    """Input of the ``edit`` tool."""

    file_path: str = Field(description="Path of the file to edit.")
    old_string: str = Field(
        description="The exact text to replace, including whitespace and indentation. It must "
        "occur exactly once unless replace_all is true."
    )
    new_string: str = Field(description="The text to put in its place.")
    replace_all: bool | None = Field(
        default=None, description="Replace every occurrence instead of exactly one."
    )


class GlobInput(_Input):
    """Input of the ``glob`` tool."""

    pattern: str = Field(
        description="Glob pattern such as '**/*.py' or 'src/*.{ts,tsx}'. '*' stays within a "
        "directory, '**' spans any number of directories."
    )
    path: str | None = Field(
        default=None, description="Directory to search in (default: the working directory)."
    )


class GrepInput(_Input):
    """Input of the ``grep`` tool."""

    pattern: str = Field(description="Regular expression (extended syntax) to search for.")
    path: str | None = Field(
        default=None,
        description="File or directory to search in (default: the working directory).",
    )
