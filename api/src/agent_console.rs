//! What the guest agent prints on the guest's console that the host reads:
//! the ready line. Tests, benchmarks and the VMM's logs parse it, so its
//! format is defined once here.
//!
//! `husk-agent: ready uptime=<seconds>s printk=<seconds>s cpus=<n>`
//!
//! - `uptime` is the guest kernel's `CLOCK_BOOTTIME` (the clock behind
//!   `/proc/uptime`) when the agent finished its setup;
//! - `printk` is the kernel-log timestamp of the agent's own "ready" record
//!   in `/dev/kmsg`: the time since the kernel started on the clock its boot
//!   messages carry. It is omitted when the kernel log cannot be read;
//! - `cpus` is the number of CPUs online in the guest.
//!
//! Both are seconds with microsecond precision. The two clocks differ: boot
//! time starts when timekeeping is initialised, the printk clock earlier.

use std::time::Duration;

/// Everything before the uptime in the ready line.
pub const READY_LINE_PREFIX: &str = "husk-agent: ready uptime=";

/// The text of the agent's ready record in the kernel log.
pub const READY_KMSG_TEXT: &str = "husk-agent: ready";

/// What the ready line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadyLine {
    pub uptime: Duration,
    pub printk: Option<Duration>,
    pub cpus: Option<u32>,
}

impl ReadyLine {
    /// Formats the ready line (without a trailing newline).
    pub fn format(&self) -> String {
        let mut line = format!("{READY_LINE_PREFIX}{}", seconds(self.uptime));
        if let Some(printk) = self.printk {
            line.push_str(" printk=");
            line.push_str(&seconds(printk));
        }
        if let Some(cpus) = self.cpus {
            line.push_str(&format!(" cpus={cpus}"));
        }
        line
    }

    /// Finds the ready line in `line` (which may carry a console or printk
    /// prefix before it) and returns what it reports.
    pub fn parse(line: &str) -> Option<Self> {
        let start = line.find(READY_LINE_PREFIX)? + READY_LINE_PREFIX.len();
        let mut fields = line[start..].trim_end().split(' ');
        let uptime = parse_seconds(fields.next()?)?;
        let (mut printk, mut cpus) = (None, None);
        for field in fields {
            match field.split_once('=')? {
                ("printk", value) if printk.is_none() => printk = Some(parse_seconds(value)?),
                ("cpus", value) if cpus.is_none() => cpus = Some(value.parse().ok()?),
                _ => return None,
            }
        }
        Some(Self { uptime, printk, cpus })
    }
}

fn seconds(d: Duration) -> String {
    format!("{}.{:06}s", d.as_secs(), d.subsec_micros())
}

fn parse_seconds(field: &str) -> Option<Duration> {
    let (secs, micros) = field.strip_suffix('s')?.split_once('.')?;
    if micros.len() != 6 || !micros.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let secs: u64 = secs.parse().ok()?;
    let micros: u64 = micros.parse().ok()?;
    Some(Duration::from_secs(secs) + Duration::from_micros(micros))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_then_parse_round_trips_to_the_microsecond() {
        let ready = ReadyLine {
            uptime: Duration::from_micros(12_345_678),
            printk: Some(Duration::from_micros(13_000_001)),
            cpus: Some(2),
        };
        let line = ready.format();
        assert_eq!(line, "husk-agent: ready uptime=12.345678s printk=13.000001s cpus=2");
        assert_eq!(ReadyLine::parse(&line), Some(ready));
        let without = ReadyLine { printk: None, cpus: None, ..ready };
        assert_eq!(without.format(), "husk-agent: ready uptime=12.345678s");
        assert_eq!(ReadyLine::parse(&without.format()), Some(without));
    }

    #[test]
    fn parse_finds_the_line_behind_a_console_prefix() {
        let line = "[    1.500000] husk-agent: ready uptime=1.499000s printk=1.600000s\r";
        let ready = ReadyLine::parse(line).unwrap();
        assert_eq!(ready.uptime, Duration::from_micros(1_499_000));
        assert_eq!(ready.printk, Some(Duration::from_micros(1_600_000)));
    }

    #[test]
    fn parse_rejects_other_lines() {
        for line in [
            "husk-agent: starting",
            "husk-agent: ready uptime=abcs",
            "husk-agent: ready uptime=1.5s",
            "husk-agent: ready uptime=1.500000",
            "husk-agent: ready uptime=1.500000s printk=2s",
            "husk-agent: ready uptime=1.500000s clock=2.000000s",
            "husk-agent: ready uptime=1.500000s cpus=two",
            "husk-agent: ready uptime=1.500000s cpus=1 cpus=2",
        ] {
            assert_eq!(ReadyLine::parse(line), None, "{line}");
        }
    }
}
