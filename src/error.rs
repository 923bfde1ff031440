//! One error type for the whole crate. Every variant a user can cause names the file or key
//! and, where there is one, the fix. `main` prints it and maps it to an exit code.

use std::path::{Path, PathBuf};

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every problem found in a config file, reported together.
    #[error("{}", config_message(file, problems))]
    Config { file: PathBuf, problems: Vec<String> },

    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },

    /// A problem with user input (data, checkpoint, run directory) with a hint on how to fix it.
    #[error("{msg}\nhint: {hint}")]
    Hint { msg: String, hint: String },

    #[error("{0}")]
    Msg(String),

    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),

    #[error("tokenizer error: {0}")]
    Tokenizer(String),
}

/// One problem fits on one line; several are listed under a header line.
fn config_message(file: &Path, problems: &[String]) -> String {
    match problems {
        [one] => format!("{}: {one}", file.display()),
        many => format!(
            "{}: {} problems:\n{}",
            file.display(),
            many.len(),
            many.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n")
        ),
    }
}

impl Error {
    pub fn msg(m: impl Into<String>) -> Self {
        Error::Msg(m.into())
    }
    pub fn hint(msg: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Hint { msg: msg.into(), hint: hint.into() }
    }
}

/// Attach a path to an I/O error: `fs::read(p).at(p)?`.
pub trait IoContext<T> {
    fn at(self, path: &Path) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn at(self, path: &Path) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.to_path_buf(), source })
    }
}
