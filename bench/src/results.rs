//! The sections of RESULTS.md that a run of their own writes: `bench-all`
//! writes the whole file, and `soak` and `kernel-cost` only their own
//! section, between markers, so that no run erases another's figures.

/// A section of the results file that one binary owns, between markers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Kept {
    pub begin: &'static str,
    pub end: &'static str,
}

/// The soak's section (`bench/src/bin/soak.rs`).
pub const SOAK: Kept = Kept {
    begin: "<!-- soak: begin -->",
    end: "<!-- soak: end -->",
};

/// The guest kernel's boot-time cost (`bench/src/bin/kernel-cost.rs`).
pub const KERNEL_COST: Kept = Kept {
    begin: "<!-- kernel-cost: begin -->",
    end: "<!-- kernel-cost: end -->",
};

/// Every kept section, in the order a full run appends them.
pub const KEPT: [Kept; 2] = [KERNEL_COST, SOAK];

impl Kept {
    /// This section of `text`, markers included, if it has one.
    pub fn find<'a>(&self, text: &'a str) -> Option<&'a str> {
        let start = text.find(self.begin)?;
        let end = text[start..].find(self.end)? + start + self.end.len();
        Some(&text[start..end])
    }

    /// `text` with this section replaced by `section` (which carries the
    /// markers), or with `section` appended when it has none.
    pub fn replace(&self, text: &str, section: &str) -> String {
        match self.find(text) {
            Some(old) => text.replacen(old, section, 1),
            None if text.is_empty() => format!("{section}\n"),
            None => format!("{}\n\n{section}\n", text.trim_end()),
        }
    }

    /// Wraps `body` in the markers.
    pub fn wrap(&self, body: &str) -> String {
        format!("{}\n{}\n{}", self.begin, body.trim_end(), self.end)
    }
}

/// `new`, a full run's text, with every kept section of `old` carried over.
pub fn keep_sections(old: &str, new: &str) -> String {
    KEPT.iter()
        .fold(new.to_owned(), |text, kept| match kept.find(old) {
            Some(section) => kept.replace(&text, section),
            None => text,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_appended_then_replaced_in_place() {
        let first = SOAK.replace("# Results\n\nbody\n", &SOAK.wrap("one"));
        assert_eq!(
            first,
            format!("# Results\n\nbody\n\n{}\n", SOAK.wrap("one"))
        );
        let second = SOAK.replace(&(first.clone() + "tail\n"), &SOAK.wrap("two"));
        assert_eq!(
            second,
            format!("# Results\n\nbody\n\n{}\ntail\n", SOAK.wrap("two"))
        );
        assert_eq!(SOAK.find(&second), Some(&*SOAK.wrap("two")));
        assert_eq!(SOAK.find("# Results\n"), None);
    }

    #[test]
    fn a_full_run_keeps_every_kept_section() {
        let old = format!(
            "# Old\n\n{}\n\n{}\n",
            KERNEL_COST.wrap("kernel"),
            SOAK.wrap("soak")
        );
        let kept = keep_sections(&old, "# New\n");
        assert!(kept.starts_with("# New\n"), "{kept}");
        assert_eq!(KERNEL_COST.find(&kept), Some(&*KERNEL_COST.wrap("kernel")));
        assert_eq!(SOAK.find(&kept), Some(&*SOAK.wrap("soak")));
        assert_eq!(keep_sections("# Old\n", "# New\n"), "# New\n");
    }
}
