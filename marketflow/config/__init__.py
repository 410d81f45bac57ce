"""TOML configuration -> typed, validated `Config` (SPEC §3).

Validation lives here, at the edge: the rest of the daemon only ever sees the frozen attrs classes of
`sections`. A file is checked completely before anything is built, and every problem is reported at once
as `PATH:LINE: key.path: reason`. Values are converted while they are checked and the classes are then
built with plain attrs constructors (no cattrs: the checks already produce the exact typed values).

The package, by job: `sections` (the typed classes and defaults), `values` (checks of single values and
the per-section tables of them), `checker` (the walk over a document, cross-key rules), `locator` (the
line of each key, which the stdlib parser does not give), `issues` (what a rejection reports) and `load`
(text or file -> `Config`). Every public name of these is importable from `marketflow.config` itself.
Symbol changes made at run time live beside them, imported by module: `symbols` (the text of a symbol),
`overlay` (the symbols overlay under the state directory) and `edit` (comment-keeping edits of the file,
what the symbols API runs).
"""

from marketflow.config.issues import ConfigError, ConfigIssue, format_key
from marketflow.config.load import (
    config_digest,
    default_config,
    load_config,
    parse_config,
    resolve_config_path,
)
from marketflow.config.sections import (
    CHANNELS,
    CONFIG_PATH_ENV,
    DEFAULT_CONFIG_FILE,
    DEFAULT_FEEDS,
    LOG_FORMATS,
    LOG_LEVELS,
    MAX_MESSAGE_MB,
    MAX_MESSAGE_MB_LIMIT,
    ROLES,
    STORAGE_URL_ENV,
    AnalyticsConfig,
    ArchiveConfig,
    BooksConfig,
    CaptureConfig,
    Config,
    DaemonConfig,
    DerivativesConfig,
    FeedConfig,
    HttpConfig,
    NatsConfig,
    StorageConfig,
    SupervisorConfig,
)

__all__ = [
    "CHANNELS",
    "CONFIG_PATH_ENV",
    "DEFAULT_CONFIG_FILE",
    "DEFAULT_FEEDS",
    "LOG_FORMATS",
    "LOG_LEVELS",
    "MAX_MESSAGE_MB",
    "MAX_MESSAGE_MB_LIMIT",
    "ROLES",
    "STORAGE_URL_ENV",
    "AnalyticsConfig",
    "ArchiveConfig",
    "BooksConfig",
    "CaptureConfig",
    "Config",
    "ConfigError",
    "ConfigIssue",
    "DaemonConfig",
    "DerivativesConfig",
    "FeedConfig",
    "HttpConfig",
    "NatsConfig",
    "StorageConfig",
    "SupervisorConfig",
    "config_digest",
    "default_config",
    "format_key",
    "load_config",
    "parse_config",
    "resolve_config_path",
]
