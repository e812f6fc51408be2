//! Validation of the identifiers a client chooses.
//!
//! Container and exec ids become directory and file names in the agent's state
//! directory, so anything that could escape it is refused up front.

use crate::error::{AgentError, Result};

const MAX_ID_LEN: usize = 128;

/// Checks an id the way runc and youki do: letters, digits, `_`, `-` and `.`,
/// not starting with `.`.
pub fn validate(field: &str, id: &str) -> Result<()> {
    if id.is_empty() {
        return Err(AgentError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(AgentError::invalid(
            field,
            format!("{} bytes is longer than {MAX_ID_LEN}", id.len()),
        ));
    }
    if id.starts_with('.') {
        return Err(AgentError::invalid(
            field,
            format!("{id:?} starts with '.'"),
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(AgentError::invalid(
            field,
            format!("{id:?} contains {bad:?}; use letters, digits, '_', '-' and '.'"),
        ));
    }
    Ok(())
}

/// An exec id may be empty (the init process); otherwise it follows [`validate`].
pub fn validate_exec(field: &str, exec_id: &str) -> Result<()> {
    if exec_id.is_empty() {
        Ok(())
    } else {
        validate(field, exec_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["c1", "pod-a_b.c", "0123456789abcdef"] {
            assert!(validate("container_id", id).is_ok(), "{id}");
        }
    }

    #[test]
    fn refuses_ids_that_could_escape_the_state_dir() {
        for id in ["", "..", ".hidden", "a/b", "a b", "x\0y", &"a".repeat(129)] {
            let err = validate("container_id", id).unwrap_err().to_string();
            assert!(err.starts_with("container_id: "), "{err}");
        }
    }
}
