//! Hardware profiles: what a board offers (flash, RAM, compute) and what the firmware keeps
//! for itself; the budget a model must fit is what remains. Profiles are TOML files in
//! `boards/`; parsing the file is the CLI's job, the schema and the arithmetic live here.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::cost::WeightDtype;
use crate::error::{Error, Result};

/// A hardware profile, as written in `boards/*.toml`. Unknown keys are refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Short name, e.g. `cortex-m7`.
    pub name: String,
    /// The board and chip it describes, with the source of its figures.
    pub description: String,
    /// Rust target triple of the firmware, e.g. `thumbv7em-none-eabihf`.
    pub target: String,
    /// CPU clock in Hz.
    pub clock_hz: u64,
    /// Total flash.
    pub flash_bytes: ByteSize,
    /// Total RAM.
    pub ram_bytes: ByteSize,
    /// Flash kept for the firmware (code, runtime, other data).
    pub reserved_flash_bytes: ByteSize,
    /// RAM kept for the firmware (stack, heap, buffers).
    pub reserved_ram_bytes: ByteSize,
    /// How weights are stored (`f32`).
    pub weight_dtype: WeightDtype,
    /// Optional compute budget: most multiply-accumulates per inference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<Count>,
    /// Optional latency budget per inference, in milliseconds (needs `cycles_per_mac`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// CPU cycles one multiply-accumulate takes on this core, to turn latency into MACs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycles_per_mac: Option<f64>,
    /// Optional least top-1 agreement with the original model a fitted model must keep.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
}

/// What a model may use on a board, after the firmware's reserved shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// Flash for the model blob (weights and format overhead).
    pub flash_bytes: u64,
    /// RAM for the activation arena.
    pub ram_bytes: u64,
    /// Most MACs per inference, if the profile limits compute.
    pub macs: Option<u64>,
}

impl Profile {
    /// The budget left for the model, or why the profile is inconsistent.
    ///
    /// ```
    /// use paoding_core::profile::{ByteSize, Profile};
    /// use paoding_core::cost::WeightDtype;
    ///
    /// let p = Profile {
    ///     name: "demo".into(), description: "".into(), target: "thumbv7em-none-eabihf".into(),
    ///     clock_hz: 100_000_000, flash_bytes: ByteSize(1 << 20), ram_bytes: ByteSize(256 << 10),
    ///     reserved_flash_bytes: ByteSize(128 << 10), reserved_ram_bytes: ByteSize(64 << 10),
    ///     weight_dtype: WeightDtype::F32, max_macs: None, max_latency_ms: Some(10.0),
    ///     cycles_per_mac: Some(2.0), min_agreement: None,
    /// };
    /// let b = p.budget()?;
    /// assert_eq!((b.flash_bytes, b.ram_bytes, b.macs), (896 << 10, 192 << 10, Some(500_000)));
    /// # Ok::<(), paoding_core::Error>(())
    /// ```
    pub fn budget(&self) -> Result<Budget> {
        let left = |total: ByteSize, reserved: ByteSize, what: &str| {
            total.0.checked_sub(reserved.0).ok_or_else(|| {
                Error::Profile(format!(
                    "{}: reserved_{what}_bytes ({}) exceeds {what}_bytes ({})",
                    self.name, reserved.0, total.0
                ))
            })
        };
        if self.clock_hz == 0 {
            return Err(Error::Profile(format!(
                "{}: clock_hz must be positive",
                self.name
            )));
        }
        let latency_macs = match (self.max_latency_ms, self.cycles_per_mac) {
            (None, _) => None,
            (Some(ms), Some(cpm)) if ms > 0.0 && cpm > 0.0 && ms.is_finite() && cpm.is_finite() => {
                Some((ms / 1000.0 * self.clock_hz as f64 / cpm) as u64)
            }
            (Some(_), None) => {
                return Err(Error::Profile(format!(
                    "{}: max_latency_ms needs cycles_per_mac",
                    self.name
                )));
            }
            (Some(_), Some(_)) => {
                return Err(Error::Profile(format!(
                    "{}: max_latency_ms and cycles_per_mac must be positive",
                    self.name
                )));
            }
        };
        if let Some(a) = self.min_agreement {
            if !(0.0..=1.0).contains(&a) {
                return Err(Error::Profile(format!(
                    "{}: min_agreement must be in [0, 1], got {a}",
                    self.name
                )));
            }
        }
        let macs = match (self.max_macs.map(|c| c.0), latency_macs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Budget {
            flash_bytes: left(self.flash_bytes, self.reserved_flash_bytes, "flash")?,
            ram_bytes: left(self.ram_bytes, self.reserved_ram_bytes, "ram")?,
            macs,
        })
    }
}

/// One resource checked against its budget.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Constraint {
    /// `flash`, `ram` or `macs`.
    pub resource: String,
    /// What the model uses.
    pub used: u64,
    /// What the budget allows.
    pub budget: u64,
    /// `budget - used`: headroom if positive, shortfall if negative.
    pub headroom: i64,
    /// `used <= budget`.
    pub fits: bool,
}

impl Constraint {
    /// Compare a use with a budget.
    pub fn new(resource: &str, used: u64, budget: u64) -> Self {
        Constraint {
            resource: resource.into(),
            used,
            budget,
            headroom: budget as i64 - used as i64,
            fits: used <= budget,
        }
    }
}

/// Check a model's flash, RAM and MAC use against a budget (MACs only when it has one).
pub fn check(budget: &Budget, flash_used: u64, ram_used: u64, macs_used: u64) -> Vec<Constraint> {
    let mut out = alloc::vec![
        Constraint::new("flash", flash_used, budget.flash_bytes),
        Constraint::new("ram", ram_used, budget.ram_bytes),
    ];
    if let Some(m) = budget.macs {
        out.push(Constraint::new("macs", macs_used, m));
    }
    out
}

/// A size in bytes: a non-negative integer, or a string with a binary suffix
/// (`"320K"`, `"1M"`, `"1.5MiB"`; K = 1024).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

/// A count (MACs): a non-negative integer, or a string with a decimal suffix (`"2M"` = 2,000,000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Count(pub u64);

/// Parse `"320K"`, `"1.5M"`, `"2MiB"` or `"4096"` with a given base (1024 for bytes, 1000 for counts).
///
/// ```
/// use paoding_core::profile::parse_quantity;
/// assert_eq!(parse_quantity("320K", 1024), Ok(327_680));
/// assert_eq!(parse_quantity("2M", 1000), Ok(2_000_000));
/// assert!(parse_quantity("-5", 1024).is_err());
/// ```
pub fn parse_quantity(text: &str, base: u64) -> core::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, suffix) = t.split_at(split);
    let unit = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KB" | "KIB" => base,
        "M" | "MB" | "MIB" => base * base,
        "G" | "GB" | "GIB" => base * base * base,
        _ => {
            return Err(format!(
                "'{text}' is not a size: use an integer or a number with K, M or G"
            ))
        }
    };
    let value: f64 = number.parse().map_err(|_| {
        format!("'{text}' is not a size: use an integer or a number with K, M or G")
    })?;
    let total = value * unit as f64;
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(format!("'{text}' is too large"));
    }
    if libm::trunc(total) != total {
        return Err(format!("'{text}' is not a whole number"));
    }
    Ok(total as u64)
}

struct QuantityVisitor(u64);

impl Visitor<'_> for QuantityVisitor {
    type Value = u64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a non-negative integer or a string such as \"256K\" or \"1M\"")
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> core::result::Result<u64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> core::result::Result<u64, E> {
        u64::try_from(v).map_err(|_| E::custom(format!("size must not be negative, got {v}")))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> core::result::Result<u64, E> {
        parse_quantity(v, self.0).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor(1024)).map(ByteSize)
    }
}

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: Deserializer<'de>>(d: D) -> core::result::Result<Self, D::Error> {
        d.deserialize_any(QuantityVisitor(1000)).map(Count)
    }
}
