//! The benchmarks' command lines: `--name value` options, each given at
//! most once; a few words do not need a parser crate.

use std::str::FromStr;

/// The word after `name` in `args`, if `name` is there.
pub fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .skip_while(|arg| *arg != name)
        .nth(1)
        .map(String::as_str)
}

/// The number after `name`, or `default`, kept between 1 and `max`. A word
/// that is not a number stops the run: a benchmark run with a size it was
/// not given would be misread.
pub fn number<T>(args: &[String], name: &str, default: T, max: T) -> T
where
    T: FromStr + Ord + From<u8>,
{
    value(args, name)
        .map(|n| {
            n.parse()
                .unwrap_or_else(|_| panic!("{name} takes a number"))
        })
        .unwrap_or(default)
        .clamp(T::from(1), max)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn options_are_read_after_their_name_and_clamped() {
        let args = words("bench --runs 7 --out /tmp/r.md --pods 0 --files 99");
        assert_eq!(value(&args, "--out"), Some("/tmp/r.md"));
        assert_eq!(value(&args, "--command"), None);
        assert_eq!(number(&args, "--runs", 3usize, 50), 7);
        assert_eq!(number(&args, "--boot-runs", 3usize, 50), 3);
        assert_eq!(number(&args, "--pods", 2u32, 20), 1);
        assert_eq!(number(&args, "--files", 2u32, 20), 20);
    }

    #[test]
    #[should_panic(expected = "--runs takes a number")]
    fn a_word_that_is_not_a_number_stops_the_run() {
        number(&words("bench --runs many"), "--runs", 3usize, 50);
    }
}
