//! Printing command results: human tables, JSON and YAML, and the number formats the human
//! views share.
use std::io::{self, Write as _};

use serde::Serialize;

use crate::cli::args::OutputFormat;

/// Writes `text` to stdout. A closed pipe (`xlb conntrack list | head`) is not an error.
pub fn print(text: &str) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Prints `value` as JSON or YAML, or as `human(value)`.
pub fn emit<T: Serialize>(
    format: OutputFormat,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    let text = match format {
        OutputFormat::Json => serde_json::to_string_pretty(value)? + "\n",
        OutputFormat::Yaml => yaml_serde::to_string(value)?,
        OutputFormat::Human => human(value),
    };
    print(&text)
}

/// A text table: columns padded to their widest cell, numeric columns right-aligned.
pub struct Table {
    header: Vec<String>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// `columns`: the header; a name starting with `>` is right-aligned (the `>` is dropped).
    pub fn new(columns: &[&str]) -> Table {
        Table {
            header: columns
                .iter()
                .map(|c| c.trim_start_matches('>').to_string())
                .collect(),
            right: columns.iter().map(|c| c.starts_with('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The lines of the table, header first, without trailing spaces.
    pub fn lines(&self) -> Vec<String> {
        let n = self.header.len();
        let mut width = vec![0usize; n];
        for r in std::iter::once(&self.header).chain(&self.rows) {
            for (i, c) in r.iter().enumerate().take(n) {
                width[i] = width[i].max(c.chars().count());
            }
        }
        std::iter::once(&self.header)
            .chain(&self.rows)
            .map(|r| {
                let mut line = String::new();
                for (i, w) in width.iter().enumerate() {
                    let c = r.get(i).map(String::as_str).unwrap_or("");
                    if i > 0 {
                        line.push_str("  ");
                    }
                    let pad = w - c.chars().count();
                    if self.right[i] {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    } else {
                        line.push_str(c);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                }
                line.trim_end().to_string()
            })
            .collect()
    }

    pub fn render(&self) -> String {
        let mut s = self.lines().join("\n");
        s.push('\n');
        s
    }
}

/// A count with an SI suffix: `999`, `1.2K`, `3.40M`, `12.0G`.
pub fn si(v: f64) -> String {
    let a = v.abs();
    let (d, suffix) = if a >= 1e12 {
        (1e12, "T")
    } else if a >= 1e9 {
        (1e9, "G")
    } else if a >= 1e6 {
        (1e6, "M")
    } else if a >= 1e3 {
        (1e3, "K")
    } else {
        return if v.fract() == 0.0 || a >= 100.0 {
            format!("{v:.0}")
        } else {
            format!("{v:.1}")
        };
    };
    let x = v / d;
    if x.abs() >= 100.0 {
        format!("{x:.0}{suffix}")
    } else if x.abs() >= 10.0 {
        format!("{x:.1}{suffix}")
    } else {
        format!("{x:.2}{suffix}")
    }
}

/// Bytes with a binary suffix: `512B`, `1.5KiB`, `3.2MiB`.
pub fn bytes(v: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = v as f64;
    let mut i = 0;
    while x >= 1024.0 && i + 1 < UNITS.len() {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{v}B")
    } else {
        format!("{x:.1}{}", UNITS[i])
    }
}

/// A rate per second, or `-` when there is none yet.
pub fn rate(v: Option<f64>) -> String {
    v.map(si).unwrap_or_else(|| "-".into())
}

/// Seconds as `42.0s`, `12m03s`, `5h02m`, `3d04h`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0);
    if s < 60.0 {
        format!("{s:.1}s")
    } else if s < 3600.0 {
        format!("{}m{:02}s", (s / 60.0) as u64, (s % 60.0) as u64)
    } else if s < 86400.0 {
        format!(
            "{}h{:02}m",
            (s / 3600.0) as u64,
            ((s % 3600.0) / 60.0) as u64
        )
    } else {
        format!(
            "{}d{:02}h",
            (s / 86400.0) as u64,
            ((s % 86400.0) / 3600.0) as u64
        )
    }
}

/// The local wall-clock time as `HH:MM:SS`.
pub fn clock() -> String {
    // SAFETY: time(NULL) and localtime_r into a zeroed tm we own.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return "--:--:--".into();
        }
        format!("{:02}:{:02}:{:02}", tm.tm_hour, tm.tm_min, tm.tm_sec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_suffixes() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(2.5), "2.5");
        assert_eq!(si(1234.0), "1.23K");
        assert_eq!(si(12_345.0), "12.3K");
        assert_eq!(si(3_400_000.0), "3.40M");
        assert_eq!(si(250e9), "250G");
    }

    #[test]
    fn byte_units() {
        assert_eq!(bytes(512), "512B");
        assert_eq!(bytes(1536), "1.5KiB");
        assert_eq!(bytes(3 * 1024 * 1024), "3.0MiB");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(4.25), "4.2s");
        assert_eq!(duration(723.0), "12m03s");
        assert_eq!(duration(5.0 * 3600.0 + 120.0), "5h02m");
        assert_eq!(duration(3.0 * 86400.0 + 4.0 * 3600.0), "3d04h");
    }

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["NAME", ">COUNT"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["longer".into(), "1000".into()]);
        assert_eq!(
            t.lines(),
            vec!["NAME    COUNT", "a           1", "longer   1000"]
        );
    }
}
