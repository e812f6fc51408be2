//! The soak's section of RESULTS.md: `bench-all` writes the whole file and
//! `soak` only its own section, between markers, so that neither run
//! erases the other's figures.

/// Where the soak's section starts and ends in the results file.
pub const SOAK_BEGIN: &str = "<!-- soak: begin -->";
pub const SOAK_END: &str = "<!-- soak: end -->";

/// The soak section of `text`, markers included, if it has one.
pub fn soak_section(text: &str) -> Option<&str> {
    let start = text.find(SOAK_BEGIN)?;
    let end = text[start..].find(SOAK_END)? + start + SOAK_END.len();
    Some(&text[start..end])
}

/// `text` with its soak section replaced by `section` (which carries the
/// markers), or with `section` appended when it has none.
pub fn with_soak_section(text: &str, section: &str) -> String {
    match soak_section(text) {
        Some(old) => text.replacen(old, section, 1),
        None if text.is_empty() => format!("{section}\n"),
        None => format!("{}\n\n{section}\n", text.trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(body: &str) -> String {
        format!("{SOAK_BEGIN}\n{body}\n{SOAK_END}")
    }

    #[test]
    fn a_section_is_appended_then_replaced_in_place() {
        let first = with_soak_section("# Results\n\nbody\n", &section("one"));
        assert_eq!(first, format!("# Results\n\nbody\n\n{}\n", section("one")));
        let second = with_soak_section(&(first.clone() + "tail\n"), &section("two"));
        assert_eq!(
            second,
            format!("# Results\n\nbody\n\n{}\ntail\n", section("two"))
        );
        assert_eq!(soak_section(&second), Some(&*section("two")));
        assert_eq!(soak_section("# Results\n"), None);
    }
}
