//! The bench's results: one row per measured figure, with a value for each way of reaching
//! the upstream and keyswap's ratio to each, printed as a markdown table and written as JSON.

use serde::Serialize;

/// The ways of reaching the upstream, in column order.
pub const COLUMNS: [&str; 4] = ["direct", "keyswap", "hudsucker", "mitmproxy"];
pub const DIRECT: usize = 0;
pub const KEYSWAP: usize = 1;

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub scenario: String,
    pub unit: &'static str,
    /// Whether a larger figure is better (throughput) or worse (latency, CPU, memory).
    pub higher_is_better: bool,
    /// Indexed like [`COLUMNS`]; `None` where not measured.
    pub values: [Option<f64>; 4],
    /// Why a value is missing, or what a column means in this row.
    pub notes: Vec<String>,
}

impl Row {
    pub fn new(scenario: impl Into<String>, unit: &'static str, higher_is_better: bool) -> Row {
        Row {
            scenario: scenario.into(),
            unit,
            higher_is_better,
            values: [None; 4],
            notes: Vec::new(),
        }
    }

    pub fn set(&mut self, column: usize, value: Option<f64>) {
        self.values[column] = value;
    }

    /// keyswap's value divided by `column`'s.
    pub fn ratio(&self, column: usize) -> Option<f64> {
        match (self.values[KEYSWAP], self.values[column]) {
            (Some(k), Some(other)) if other != 0.0 => Some(k / other),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub mode: &'static str,
    pub machine: Machine,
    pub pinning: String,
    pub skipped: Vec<String>,
    pub rows: Vec<RowJson>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct RowJson {
    #[serde(flatten)]
    pub row: Row,
    pub direct: Option<f64>,
    pub keyswap: Option<f64>,
    pub hudsucker: Option<f64>,
    pub mitmproxy: Option<f64>,
    pub keyswap_over_direct: Option<f64>,
    pub keyswap_over_hudsucker: Option<f64>,
    pub keyswap_over_mitmproxy: Option<f64>,
}

impl From<&Row> for RowJson {
    fn from(row: &Row) -> RowJson {
        RowJson {
            direct: row.values[0],
            keyswap: row.values[1],
            hudsucker: row.values[2],
            mitmproxy: row.values[3],
            keyswap_over_direct: row.ratio(0),
            keyswap_over_hudsucker: row.ratio(2),
            keyswap_over_mitmproxy: row.ratio(3),
            row: row.clone(),
        }
    }
}

fn figure(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0}"),
        Some(v) if v.abs() >= 10.0 => format!("{v:.1}"),
        Some(v) => format!("{v:.2}"),
    }
}

fn ratio(value: Option<f64>) -> String {
    match value {
        None => "–".into(),
        Some(v) if v >= 10.0 => format!("{v:.0}×"),
        Some(v) => format!("{v:.2}×"),
    }
}

/// The markdown table, with notes under it.
pub fn markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| scenario | direct | keyswap | hudsucker | mitmproxy | keyswap/direct | keyswap/hudsucker | keyswap/mitmproxy |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut notes = Vec::new();
    for row in rows {
        let mut name = format!("{} ({})", row.scenario, row.unit);
        for note in &row.notes {
            notes.push(note.clone());
            name.push_str(&format!(" [{}]", notes.len()));
        }
        out.push_str(&format!(
            "| {name} | {} | {} | {} | {} | {} | {} | {} |\n",
            figure(row.values[0]),
            figure(row.values[1]),
            figure(row.values[2]),
            figure(row.values[3]),
            ratio(row.ratio(0)),
            ratio(row.ratio(2)),
            ratio(row.ratio(3)),
        ));
    }
    for (i, note) in notes.iter().enumerate() {
        out.push_str(&format!("\n[{}] {note}", i + 1));
    }
    if !notes.is_empty() {
        out.push('\n');
    }
    out
}

/// The `q` quantile of sorted `values` (nearest rank).
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len().max(1)) - 1).copied()
}

/// `values`, sorted for [`quantile`].
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}
