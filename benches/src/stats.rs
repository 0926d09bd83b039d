//! Summaries of samples: medians and p90, as the issues ask for.

use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Series {
    pub name: String,
    pub unit: String,
    /// What is measured, shared by the systems compared on it (e.g.
    /// "podman run --rm /bin/true"): one plot panel each. Empty when the
    /// series stands alone.
    pub group: String,
    /// Which system the samples are of within the group (e.g. "husk",
    /// "crun"): one distribution in the group's panel.
    pub system: String,
    pub samples: Vec<f64>,
}

impl Series {
    pub fn new(name: &str, unit: &str) -> Self {
        Self { name: name.into(), unit: unit.into(), ..Default::default() }
    }

    /// A series compared with others: `system` measured on `group`.
    pub fn of(group: &str, system: &str, unit: &str) -> Self {
        Self {
            name: format!("{group} ({system})"),
            unit: unit.into(),
            group: group.into(),
            system: system.into(),
            samples: Vec::new(),
        }
    }

    pub fn push(&mut self, value: f64) {
        self.samples.push(value);
    }

    fn sorted(&self) -> Vec<f64> {
        let mut sorted = self.samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted
    }

    /// The median (the mean of the middle two for an even count).
    pub fn median(&self) -> f64 {
        let s = self.sorted();
        match s.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => s[n / 2],
            n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
        }
    }

    /// The nearest-rank 90th percentile.
    pub fn p90(&self) -> f64 {
        let s = self.sorted();
        if s.is_empty() {
            return f64::NAN;
        }
        let rank = ((0.9 * s.len() as f64).ceil() as usize).clamp(1, s.len());
        s[rank - 1]
    }
}

/// The non-empty groups of `series`, in first-appearance order.
pub fn groups<'a>(series: &[&'a Series]) -> Vec<&'a str> {
    let mut groups: Vec<&str> = Vec::new();
    for s in series {
        if !s.group.is_empty() && !groups.contains(&s.group.as_str()) {
            groups.push(&s.group);
        }
    }
    groups
}

/// A markdown table of the series' medians and p90s, `decimals` places.
pub fn markdown_table<'a>(series: impl IntoIterator<Item = &'a Series>, decimals: usize) -> String {
    let mut table = String::from("| measurement | median | p90 | samples |\n|---|---:|---:|---:|\n");
    for s in series {
        table.push_str(&format!(
            "| {} | {:.prec$} {} | {:.prec$} {} | {} |\n",
            s.name,
            s.median(),
            s.unit,
            s.p90(),
            s.unit,
            s.samples.len(),
            prec = decimals
        ));
    }
    table
}

pub fn utc_date() -> String {
    // The date part of the runtime's RFC 3339 timestamp: YYYY-MM-DD.
    husk_runtime::container_state::now_rfc3339()[..10].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_p90() {
        let mut s = Series::new("x", "ms");
        for v in [5.0, 1.0, 3.0, 2.0, 4.0] {
            s.push(v);
        }
        assert_eq!(s.median(), 3.0);
        assert_eq!(s.p90(), 5.0);
        s.push(6.0);
        assert_eq!(s.median(), 3.5);
        assert!(Series::new("empty", "ms").median().is_nan());
    }
}

/// Series read from a suite's `BENCH {"name", "unit", "value"}` lines
/// (optionally also "group" and "system", see [`Series`]), in the order
/// their names first appear.
#[derive(Default)]
pub struct BenchLines {
    pub order: Vec<String>,
    pub series: std::collections::BTreeMap<String, Series>,
}

impl BenchLines {
    pub fn add_output(&mut self, stdout: &str) -> anyhow::Result<()> {
        for line in stdout.lines().filter_map(|l| l.strip_prefix("BENCH ")) {
            let sample: serde_json::Value = serde_json::from_str(line)?;
            let name = sample["name"].as_str().unwrap_or_default().to_owned();
            let unit = sample["unit"].as_str().unwrap_or_default();
            let group = sample["group"].as_str().unwrap_or_default();
            let system = sample["system"].as_str().unwrap_or_default();
            if !self.series.contains_key(&name) {
                self.order.push(name.clone());
            }
            self.series
                .entry(name.clone())
                .or_insert_with(|| Series { group: group.into(), system: system.into(), ..Series::new(&name, unit) })
                .push(sample["value"].as_f64().unwrap_or(f64::NAN));
        }
        Ok(())
    }

    pub fn ordered(&self) -> Vec<&Series> {
        self.order.iter().map(|n| &self.series[n]).collect()
    }
}

/// A progress suffix: time so far and, once something is done, the
/// estimated time left at the average pace (", 2m10s so far, ~5m left").
pub fn eta(started: std::time::Instant, done: usize, total: usize) -> String {
    let elapsed = started.elapsed().as_secs();
    let clock = |s: u64| if s >= 60 { format!("{}m{:02}s", s / 60, s % 60) } else { format!("{s}s") };
    if done == 0 || done >= total {
        return format!(", {} so far", clock(elapsed));
    }
    let left = elapsed * (total - done) as u64 / done as u64;
    format!(", {} so far, ~{} left", clock(elapsed), clock(left))
}
