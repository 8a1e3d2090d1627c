//! Output: the JSON summary on stdout, a human table and progress bars on stderr.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

/// A summary a scenario prints at the end.
pub trait Summary: Serialize {
    /// The scenario's name, for the table's title.
    fn title(&self) -> &'static str;
    /// Rows of the human table: figure name, value, and a note.
    fn rows(&self) -> Vec<(&'static str, String, String)>;
}

/// Prints the human table on stderr and, with `json`, the summary object on stdout.
pub fn emit(summary: &impl Summary, json: bool) -> anyhow::Result<()> {
    eprintln!("{}", table(summary.title(), &summary.rows()));
    if json {
        println!("{}", serde_json::to_string(summary)?);
    }
    Ok(())
}

fn table(title: &str, rows: &[(&'static str, String, String)]) -> String {
    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let value_w = rows.iter().map(|r| r.1.chars().count()).max().unwrap_or(0);
    let mut out = format!("\n{title}\n{}\n", "-".repeat(title.chars().count()));
    for (name, value, note) in rows {
        let line = format!("{name:<name_w$}  {value:>value_w$}  {note}");
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A value with thousands separators, for the table.
pub fn n(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes as MiB with one decimal, for the table notes.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// An optional millisecond figure.
pub fn opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into())
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
pub fn bar(len: u64, prefix: &'static str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>9} [{elapsed_precise}] {bar:30.cyan/blue} {pos:>7}/{len:7} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(prefix);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

/// Logs a line on stderr without breaking a progress bar.
pub fn note(bar: Option<&ProgressBar>, message: impl AsRef<str>) {
    match bar {
        Some(bar) => bar.println(message.as_ref()),
        None => eprintln!("{}", message.as_ref()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_separators() {
        assert_eq!(n(0), "0");
        assert_eq!(n(999), "999");
        assert_eq!(n(1000), "1,000");
        assert_eq!(n(12_345_678), "12,345,678");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            "t",
            &[
                ("a", "1".into(), "note".into()),
                ("long_name", "1,000".into(), String::new()),
            ],
        );
        assert!(t.contains("a              1  note\n"), "{t}");
        assert!(t.contains("long_name  1,000\n"), "{t}");
    }
}
