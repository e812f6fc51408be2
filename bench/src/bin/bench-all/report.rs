//! The report and the formatting its tables share.

use hull_bench::ratio;

/// The report: markdown, printed as it grows, and written in the order of
/// its sections (0 the header, then the 1 to 5) whatever order they
/// ran in.
#[derive(Default)]
pub(crate) struct Report {
    sections: [String; 7],
    current: usize,
}

impl Report {
    pub(crate) fn section(&mut self, index: usize) {
        self.current = index;
    }

    pub(crate) fn line(&mut self, line: &str) {
        println!("{line}");
        let text = &mut self.sections[self.current];
        text.push_str(line);
        text.push('\n');
    }

    pub(crate) fn text(&self) -> String {
        self.sections.concat()
    }
}

pub(crate) fn show(value: Option<f64>, decimals: usize) -> String {
    value.map_or("-".to_owned(), |v| format!("{v:.decimals$}"))
}

pub(crate) fn ratio_of(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => ratio(a, b),
        _ => "-".to_owned(),
    }
}
