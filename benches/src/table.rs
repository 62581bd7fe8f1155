//! The result table: one row per metric with the direct and the Postern value, their ratio,
//! and, where the issue sets one, the target and PASS/MISS; and a plain grid (one column per
//! path) for the peers.

/// One line of the table, already formatted.
#[derive(Debug, Clone)]
pub struct Row {
    pub metric: String,
    pub direct: String,
    pub postern: String,
    pub ratio: String,
    pub target: String,
    pub result: String,
}

/// A row with `prec` decimals; the ratio is `postern / direct` when there is a direct value.
pub fn row(metric: &str, direct: Option<f64>, postern: f64, prec: usize) -> Row {
    Row {
        metric: metric.into(),
        direct: direct.map_or("—".into(), |d| format!("{d:.prec$}")),
        postern: format!("{postern:.prec$}"),
        ratio: direct
            .filter(|d| *d > 0.0)
            .map_or("—".into(), |d| format!("{:.3}x", postern / d)),
        target: String::new(),
        result: String::new(),
    }
}

/// `r` with a target and whether it was met.
pub fn with_target(mut r: Row, target: &str, pass: bool) -> Row {
    r.target = target.into();
    r.result = if pass { "PASS" } else { "MISS" }.into();
    r
}

/// Prints the rows under a header, columns right-aligned (the metric left-aligned).
pub fn print_table(rows: &[Row]) {
    let headers = [
        "metric",
        "direct",
        "postern",
        "postern/direct",
        "target",
        "result",
    ];
    let cells: Vec<[&str; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.metric.as_str(),
                r.direct.as_str(),
                r.postern.as_str(),
                r.ratio.as_str(),
                r.target.as_str(),
                r.result.as_str(),
            ]
        })
        .collect();
    let mut w = headers.map(|h| h.chars().count());
    for c in &cells {
        for (i, s) in c.iter().enumerate() {
            w[i] = w[i].max(s.chars().count());
        }
    }
    let line = |c: [&str; 6]| {
        let mut out = format!("{:<w0$}", c[0], w0 = w[0]);
        for i in 1..6 {
            let pad = w[i] - c[i].chars().count();
            out.push_str("  ");
            out.push_str(&" ".repeat(pad));
            out.push_str(c[i]);
        }
        println!("{}", out.trim_end());
    };
    line(headers);
    println!("{}", "-".repeat(w.iter().sum::<usize>() + 2 * 5));
    for c in cells {
        line(c);
    }
}

/// Prints `rows` under `headers` (one cell per column each), the first column left-aligned and
/// the others right-aligned, with a rule under the header.
pub fn print_grid(headers: &[&str], rows: &[Vec<String>]) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < w.len() {
                w[i] = w[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate().take(w.len()) {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                out.push_str(c);
                out.push_str(&" ".repeat(pad));
            } else {
                out.push_str("  ");
                out.push_str(&" ".repeat(pad));
                out.push_str(c);
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    println!(
        "{}",
        "-".repeat(w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1))
    );
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}
