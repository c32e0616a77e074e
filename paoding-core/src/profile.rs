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

/// A hardware profile, as written in `boards/*.toml`.
///
/// Only the two budgets a board defines are required, `flash_bytes` and `ram_bytes`; every
/// other field has the default documented on it ([`Profile::new`] builds one with all
/// defaults). [`KEYS`] lists the keys a file may use.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Profile {
    /// Short name, e.g. `cortex-m7`. Default in a file: the file's name without extension.
    pub name: String,
    /// The board and chip it describes, with the source of its figures. Default: empty.
    pub description: String,
    /// Rust target triple of the firmware, e.g. `thumbv7em-none-eabihf`. Default: empty
    /// (not stated; nothing depends on it).
    pub target: String,
    /// CPU clock in Hz. Default: none; needed only with `max_latency_ms`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_hz: Option<u64>,
    /// Total flash. Required, more than 0.
    pub flash_bytes: ByteSize,
    /// Total RAM. Required, more than 0.
    pub ram_bytes: ByteSize,
    /// Flash kept for the firmware (code, runtime, other data). Default: 0.
    pub reserved_flash_bytes: ByteSize,
    /// RAM kept for the firmware (stack, heap, buffers). Default: 0.
    pub reserved_ram_bytes: ByteSize,
    /// How weights are stored. Default: `f32`.
    pub weight_dtype: WeightDtype,
    /// Most multiply-accumulates per inference. Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_macs: Option<Count>,
    /// Latency budget per inference, in milliseconds (needs `clock_hz` and
    /// `cycles_per_mac`). Default: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_latency_ms: Option<f64>,
    /// CPU cycles one multiply-accumulate takes on this core with paoding-runtime's f32
    /// kernels, to turn latency into MACs. Default: none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_per_mac: Option<f64>,
    /// The same with its int8 kernels, for a model stored as int8. Default: `cycles_per_mac`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cycles_per_mac_int8: Option<f64>,
    /// Least top-1 agreement with the original model a fitted model must keep, in [0, 1].
    /// Default: none (`fit --min-agreement` may set it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_agreement: Option<f64>,
    /// Widths (units kept per layer) that `fit` keeps multiples of, so that every layer runs
    /// in the kernels' blocks: int8 convolutions take input channels in pairs and filters in
    /// fours, f32 ones filters in eights and fours, and a remainder takes a slower loop. In
    /// [1, 64]. Default: none (1; `fit --round-to` overrides it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub round_to: Option<usize>,
}

/// Every key a profile file may use; [`Profile`] documents each one and its default.
pub const KEYS: &[&str] = &[
    "name",
    "description",
    "target",
    "clock_hz",
    "flash_bytes",
    "ram_bytes",
    "reserved_flash_bytes",
    "reserved_ram_bytes",
    "weight_dtype",
    "max_macs",
    "max_latency_ms",
    "cycles_per_mac",
    "cycles_per_mac_int8",
    "min_agreement",
    "round_to",
];

/// The keys a profile file must have.
pub const REQUIRED_KEYS: &[&str] = &["flash_bytes", "ram_bytes"];

/// The largest size or count a profile or a command-line budget may state: 2^63 - 1, so that
/// every difference of two of them is exact in an `i64`.
pub const MAX_QUANTITY: u64 = i64::MAX as u64;

/// One thing wrong with a profile, and the key it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The key (one of [`KEYS`]).
    pub key: &'static str,
    /// What is wrong with it.
    pub message: String,
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
    /// A profile with the two required budgets and every other field at its default.
    ///
    /// ```
    /// use paoding_core::profile::{ByteSize, Profile};
    ///
    /// let mut p = Profile::new("demo", ByteSize(1 << 20), ByteSize(256 << 10));
    /// p.reserved_flash_bytes = ByteSize(128 << 10);
    /// p.reserved_ram_bytes = ByteSize(64 << 10);
    /// (p.clock_hz, p.max_latency_ms, p.cycles_per_mac) = (Some(100_000_000), Some(10.0), Some(2.0));
    /// let b = p.budget()?;
    /// assert_eq!((b.flash_bytes, b.ram_bytes, b.macs), (896 << 10, 192 << 10, Some(500_000)));
    /// # Ok::<(), paoding_core::Error>(())
    /// ```
    pub fn new(name: impl Into<String>, flash_bytes: ByteSize, ram_bytes: ByteSize) -> Profile {
        Profile {
            name: name.into(),
            description: String::new(),
            target: String::new(),
            clock_hz: None,
            flash_bytes,
            ram_bytes,
            reserved_flash_bytes: ByteSize(0),
            reserved_ram_bytes: ByteSize(0),
            weight_dtype: WeightDtype::F32,
            max_macs: None,
            max_latency_ms: None,
            cycles_per_mac: None,
            cycles_per_mac_int8: None,
            min_agreement: None,
            round_to: None,
        }
    }

    /// Every inconsistency of the profile, each naming its key: a name that cannot name a
    /// file, budgets of 0 or beyond [`MAX_QUANTITY`], reserved shares that leave nothing, a
    /// latency budget without what turns it into MACs, values out of range.
    ///
    /// ```
    /// use paoding_core::profile::{ByteSize, Profile};
    ///
    /// let mut p = Profile::new("demo", ByteSize(0), ByteSize(64 << 10));
    /// p.reserved_ram_bytes = ByteSize(64 << 10);
    /// let keys: Vec<_> = p.problems().iter().map(|p| p.key).collect();
    /// assert_eq!(keys, ["flash_bytes", "reserved_ram_bytes"]);
    /// ```
    pub fn problems(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut problem = |key: &'static str, message: String| out.push(Problem { key, message });
        if self.name.is_empty()
            || self
                .name
                .chars()
                .any(|c| c == '/' || c == '\\' || c.is_control())
        {
            problem(
                "name",
                format!(
                    "{:?} cannot name output files (`-o out/{{profile}}.pdg`): it must be \
                     non-empty, without '/', '\\' or control characters",
                    self.name
                ),
            );
        }
        if self.clock_hz == Some(0) {
            problem("clock_hz", "must be more than 0".into());
        }
        for (key, size) in [
            ("flash_bytes", self.flash_bytes),
            ("ram_bytes", self.ram_bytes),
        ] {
            if size.0 == 0 {
                problem(
                    key,
                    "a budget of 0 bytes leaves no room for any model".into(),
                );
            }
        }
        for (key, size) in [
            ("flash_bytes", self.flash_bytes),
            ("ram_bytes", self.ram_bytes),
            ("reserved_flash_bytes", self.reserved_flash_bytes),
            ("reserved_ram_bytes", self.reserved_ram_bytes),
        ] {
            if size.0 > MAX_QUANTITY {
                problem(key, format!("{} bytes is beyond 2^63 - 1", size.0));
            }
        }
        for (key, total, reserved, what) in [
            (
                "reserved_flash_bytes",
                self.flash_bytes,
                self.reserved_flash_bytes,
                "flash_bytes",
            ),
            (
                "reserved_ram_bytes",
                self.ram_bytes,
                self.reserved_ram_bytes,
                "ram_bytes",
            ),
        ] {
            if total.0 > 0 && reserved >= total {
                problem(
                    key,
                    format!(
                        "{} leaves nothing of {what} ({}) for the model",
                        reserved.0, total.0
                    ),
                );
            }
        }
        match self.max_macs {
            Some(Count(0)) => problem("max_macs", "a budget of 0 MACs allows no model".into()),
            Some(Count(m)) if m > MAX_QUANTITY => {
                problem("max_macs", format!("{m} is beyond 2^63 - 1"))
            }
            _ => {}
        }
        let positive = |v: f64| v > 0.0 && v.is_finite();
        if let Some(ms) = self.max_latency_ms {
            if !positive(ms) {
                problem(
                    "max_latency_ms",
                    format!("must be a positive number, got {ms}"),
                );
            }
            let missing: Vec<&str> = [
                ("clock_hz", self.clock_hz.is_some()),
                ("cycles_per_mac", self.cycles_per_mac.is_some()),
            ]
            .iter()
            .filter(|(_, set)| !set)
            .map(|(key, _)| *key)
            .collect();
            if !missing.is_empty() {
                problem(
                    "max_latency_ms",
                    format!(
                        "needs {} to turn milliseconds into MACs",
                        missing.join(" and ")
                    ),
                );
            }
        }
        for (key, value) in [
            ("cycles_per_mac", self.cycles_per_mac),
            ("cycles_per_mac_int8", self.cycles_per_mac_int8),
        ] {
            if let Some(cpm) = value.filter(|&c| !positive(c)) {
                problem(key, format!("must be a positive number, got {cpm}"));
            }
        }
        if let Some(a) = self.min_agreement {
            if !(0.0..=1.0).contains(&a) {
                problem("min_agreement", format!("must be in [0, 1], got {a}"));
            }
        }
        if let Some(r) = self.round_to.filter(|r| !(1..=64).contains(r)) {
            problem("round_to", format!("must be in [1, 64], got {r}"));
        }
        out
    }

    /// The budget left for the model stored as the profile's `weight_dtype`, or why the
    /// profile is inconsistent (its first [`problem`](Profile::problems)).
    pub fn budget(&self) -> Result<Budget> {
        self.budget_for(self.weight_dtype)
    }

    /// CPU cycles per multiply-accumulate of the kernels for `dtype`, if the profile says.
    pub fn cycles_per_mac_for(&self, dtype: WeightDtype) -> Option<f64> {
        match dtype {
            WeightDtype::F32 => self.cycles_per_mac,
            WeightDtype::Int8 => self.cycles_per_mac_int8.or(self.cycles_per_mac),
        }
    }

    /// The budget left for the model stored as `dtype`: a latency limit allows as many MACs
    /// as that dtype's kernels run in it.
    ///
    /// ```
    /// use paoding_core::{cost::WeightDtype, profile::{ByteSize, Profile}};
    ///
    /// let mut p = Profile::new("board", ByteSize(1 << 20), ByteSize(256 << 10));
    /// p.clock_hz = Some(100_000_000);
    /// p.max_latency_ms = Some(10.0);
    /// (p.cycles_per_mac, p.cycles_per_mac_int8) = (Some(2.0), Some(8.0));
    /// assert_eq!(p.budget_for(WeightDtype::F32)?.macs, Some(500_000));
    /// assert_eq!(p.budget_for(WeightDtype::Int8)?.macs, Some(125_000));
    /// # Ok::<(), paoding_core::Error>(())
    /// ```
    pub fn budget_for(&self, dtype: WeightDtype) -> Result<Budget> {
        if let Some(p) = self.problems().into_iter().next() {
            return Err(Error::Profile(format!(
                "{}: {}: {}",
                self.name, p.key, p.message
            )));
        }
        let cycles = self.cycles_per_mac_for(dtype);
        let latency_macs = match (self.max_latency_ms, cycles, self.clock_hz) {
            (Some(ms), Some(cpm), Some(hz)) => Some(latency_to_macs(ms, hz, cpm)),
            _ => None,
        };
        let macs = match (self.max_macs.map(|c| c.0), latency_macs) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Ok(Budget {
            flash_bytes: self.flash_bytes.0 - self.reserved_flash_bytes.0,
            ram_bytes: self.ram_bytes.0 - self.reserved_ram_bytes.0,
            macs,
        })
    }
}

/// MACs a core at `clock_hz`, taking `cycles_per_mac` each, runs in `ms` milliseconds
/// (saturating at [`MAX_QUANTITY`]).
pub fn latency_to_macs(ms: f64, clock_hz: u64, cycles_per_mac: f64) -> u64 {
    let macs = ms / 1000.0 * clock_hz as f64 / cycles_per_mac;
    if macs >= MAX_QUANTITY as f64 {
        MAX_QUANTITY
    } else {
        macs as u64
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
            headroom: (i128::from(budget) - i128::from(used))
                .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64,
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
    if !total.is_finite() || total >= MAX_QUANTITY as f64 {
        return Err(format!("'{text}' is too large: beyond 2^63 - 1"));
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
        if v > MAX_QUANTITY {
            return Err(E::custom(format!("{v} is too large: beyond 2^63 - 1")));
        }
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
