//! The shared secret: read from `--token-file` or `PARECO_TOKEN`, or made up
//! by a server that has none.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Environment variable holding the token.
pub const ENV: &str = "PARECO_TOKEN";

/// The token from `file` or the environment, if any.
pub fn load(file: Option<&Path>) -> Result<Option<String>> {
    if let Some(path) = file {
        if !path.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
        let mode = std::fs::metadata(path).map_or(0, |m| m.permissions().mode());
        if mode & 0o077 != 0 {
            warn(format!(
                "token file {} can be read by other users (mode {:04o}); chmod 600 it",
                path.display(),
                mode & 0o7777
            ));
        }
        return Ok(Some(check(text.trim(), &path.display().to_string())?));
    }
    match std::env::var(ENV) {
        Ok(t) => Ok(Some(check(t.trim(), ENV)?)),
        Err(_) => Ok(None),
    }
}

/// The token a client needs to connect.
pub fn require(file: Option<&Path>) -> Result<String> {
    match load(file)? {
        Some(token) => Ok(token),
        None if file.is_some() => bail!("token file {} does not exist", file.unwrap_or(Path::new("")).display()),
        None => bail!("no token: set {ENV} or pass --token-file (the server prints its token when it starts)"),
    }
}

/// Shorter tokens are said to be weak: the handshake is keyed by the token
/// alone, so a short or guessable one can be found offline from one
/// recorded connection.
const MIN_TOKEN_LEN: usize = 16;

fn check(token: &str, origin: &str) -> Result<String> {
    if token.is_empty() {
        bail!("the token from {origin} is empty");
    }
    if token.len() < MIN_TOKEN_LEN {
        warn(format!(
            "the token from {origin} has only {} characters; use one of at least {MIN_TOKEN_LEN} random ones \
             (a server started without one makes a 128-bit token)",
            token.len()
        ));
    }
    Ok(token.to_string())
}

/// Prints a warning about the token, once per process.
fn warn(text: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&text) {
        eprintln!("pareco: warning: {text}");
        said.push(text);
    }
}

/// A server's token: the configured one, or a new random one (128 bits),
/// saved to `file` with mode 0600 if a file was named, and announced once.
pub fn for_server(file: Option<&Path>) -> Result<String> {
    if let Some(token) = load(file)? {
        return Ok(token);
    }
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("the system random number generator failed: {e}"))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match file {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating token file {}", path.display()))?;
            writeln!(f, "{token}").with_context(|| format!("writing token file {}", path.display()))?;
            eprintln!("pareco: generated a token and saved it to {} (mode 0600)", path.display());
        }
        None => eprintln!("pareco: generated token (clients need it as {ENV}): {token}"),
    }
    Ok(token)
}
