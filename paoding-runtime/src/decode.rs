//! A compact hand-written decoder for the description's postcard encoding (the writer uses
//! serde + postcard; serde's generated visitors would cost kilobytes of flash here).
//!
//! postcard's rules, as the records use them: unsigned integers above `u8` are LEB128
//! varints (`u32`: at most 5 bytes, no bits beyond 32), `u8` is one byte, `bool` one byte 0 or
//! 1, `f32` four little-endian bytes, enum variants a varint index, sequences (`heapless::Vec`)
//! a varint length then the elements, arrays and structs their fields in order.

use crate::format::{
    Act, ConvRec, DescHead, NodeRec, OpRec, Operand, PoolRec, WRef, MAX_INPUTS, MAX_RANK,
};

/// A weights reference from its two fields.
fn wref(offset: u32, len: u32) -> WRef {
    WRef { offset, len }
}

/// A cursor over encoded bytes; every read fails past the end. The reads return `Option`
/// (a one-register `?`); the two entry points turn `None` into [`Error::Decode`].
pub(crate) struct Reader<'a> {
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(b)
    }

    /// A LEB128 varint of an integer of `bits` bits (postcard rejects overlong encodings and
    /// bits beyond the type). Only for `usize` on targets where it is not 32 bits wide.
    fn varint(&mut self, bits: u32) -> Option<u64> {
        let max = bits.div_ceil(7);
        let last_max = (1u32 << (bits - 7 * (max - 1))) - 1;
        let mut v: u64 = 0;
        for i in 0..max {
            let b = self.byte()?;
            v |= u64::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i == max - 1 && u32::from(b) > last_max {
                    break;
                }
                return Some(v);
            }
        }
        None
    }

    /// A `u32` varint: at most 5 bytes, the fifth holding the top 4 bits (`varint(32)` in
    /// 32-bit arithmetic). Every integer of a record comes through here, most of them one
    /// byte long: that case takes no stack frame.
    fn u32(&mut self) -> Option<u32> {
        match self.rest.split_first() {
            Some((&b, rest)) if b < 0x80 => {
                self.rest = rest;
                Some(u32::from(b))
            }
            _ => self.u32_long(),
        }
    }

    /// [`Reader::u32`] of more than one byte (or none).
    #[inline(never)]
    fn u32_long(&mut self) -> Option<u32> {
        let mut bytes = self.rest.iter();
        let mut v: u32 = 0;
        let mut shift = 0;
        loop {
            let b = *bytes.next()?;
            v |= u32::from(b & 0x7F) << shift;
            if b < 0x80 {
                break;
            }
            shift += 7;
            if shift == 28 {
                let b = *bytes.next()?;
                if b > 0x0F {
                    return None;
                }
                v |= u32::from(b) << 28;
                break;
            }
        }
        self.rest = bytes.as_slice();
        Some(v)
    }

    fn f32(&mut self) -> Option<f32> {
        let (b, rest) = self.rest.split_first_chunk::<4>()?;
        self.rest = rest;
        Some(f32::from_le_bytes(*b))
    }

    fn bool(&mut self) -> Option<bool> {
        match self.byte()? {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        }
    }

    fn u32s<const N: usize>(&mut self) -> Option<[u32; N]> {
        let mut a = [0; N];
        self.fill(&mut a)?;
        Some(a)
    }

    /// Consecutive `u32` fields into `out` (one loop for a record's integers: less flash
    /// than a call and a check per field).
    #[inline(never)]
    fn fill(&mut self, out: &mut [u32]) -> Option<()> {
        for x in out.iter_mut() {
            *x = self.u32()?;
        }
        Some(())
    }

    /// A sequence length, checked against the capacity `cap`.
    fn len(&mut self, cap: usize) -> Option<usize> {
        let n = if usize::BITS == 32 {
            u64::from(self.u32()?)
        } else {
            self.varint(usize::BITS)?
        };
        if n > cap as u64 {
            return None;
        }
        Some(n as usize)
    }

    fn act(&mut self) -> Option<Act> {
        Some(match self.u32()? {
            0 => Act::Identity,
            1 => Act::Relu,
            2 => Act::Clip {
                min: self.f32()?,
                max: self.f32()?,
            },
            3 => Act::Sigmoid,
            4 => Act::Tanh,
            _ => return None,
        })
    }

    fn pool(&mut self) -> Option<PoolRec> {
        let [k0, k1, s0, s1, p0, p1, p2, p3] = self.u32s()?;
        Some(PoolRec {
            kernel: [k0, k1],
            stride: [s0, s1],
            padding: [p0, p1, p2, p3],
            count_include_pad: self.bool()?,
        })
    }

    /// An operand, decoded over `out`.
    fn operand_into(&mut self, out: &mut Operand) -> Option<()> {
        out.id = self.u32()?;
        out.offset = self.u32()?;
        out.shape.clear();
        for _ in 0..self.len(MAX_RANK)? {
            out.shape.push(self.u32()?).ok()?;
        }
        Some(())
    }

    /// An operator, decoded over `out`.
    fn op_into(&mut self, out: &mut OpRec) -> Option<()> {
        match self.u32()? {
            0 => {
                let [units, inputs, w0, w1, b0, b1] = self.u32s()?;
                let act = self.act()?;
                *out = OpRec::Dense {
                    units,
                    inputs,
                    weights: wref(w0, w1),
                    bias: wref(b0, b1),
                    act,
                };
            }
            1 => {
                let [oc, ic, kh, kw, sy, sx, dy, dx, pt, pl, pb, pr, groups, w0, w1, b0, b1] =
                    self.u32s()?;
                let act = self.act()?;
                *out = OpRec::Conv2d(ConvRec {
                    out_channels: oc,
                    in_channels: ic,
                    kernel: [kh, kw],
                    stride: [sy, sx],
                    dilation: [dy, dx],
                    padding: [pt, pl, pb, pr],
                    groups,
                    weights: wref(w0, w1),
                    bias: wref(b0, b1),
                    act,
                });
            }
            2 => {
                let [s0, s1, t0, t1] = self.u32s()?;
                *out = OpRec::BatchNorm {
                    scale: wref(s0, s1),
                    shift: wref(t0, t1),
                };
            }
            3 => *out = OpRec::Activation(self.act()?),
            4 => *out = OpRec::Softmax { axis: self.byte()? },
            5 => *out = OpRec::MaxPool(self.pool()?),
            6 => *out = OpRec::AveragePool(self.pool()?),
            7 => *out = OpRec::GlobalAveragePool,
            8 => *out = OpRec::Add,
            9 => *out = OpRec::Concat { axis: self.byte()? },
            10 => *out = OpRec::Reshape,
            11 => {
                *out = OpRec::Transpose {
                    perm: heapless::Vec::new(),
                };
                let OpRec::Transpose { perm } = out else {
                    return None;
                };
                for _ in 0..self.len(MAX_RANK)? {
                    perm.push(self.byte()?).ok()?;
                }
            }
            12 => {
                *out = OpRec::Pad {
                    pads: heapless::Vec::new(),
                    value: 0.0,
                };
                let OpRec::Pad { pads, value } = out else {
                    return None;
                };
                for _ in 0..self.len(MAX_RANK)? {
                    pads.push(self.u32s()?).ok()?;
                }
                *value = self.f32()?;
            }
            _ => return None,
        }
        Some(())
    }

    /// The description's first record, decoded over `out`.
    pub fn head_into(&mut self, out: &mut DescHead) -> Option<()> {
        out.n_nodes = self.u32()?;
        self.operand_into(&mut out.input)?;
        self.operand_into(&mut out.output)
    }

    /// One node record, decoded over `out` (in place: a record is some 400 bytes, and every
    /// move of one through an `Option` or a `Result` is a copy). On `None` `out` holds a
    /// partly decoded record.
    #[inline(never)]
    pub fn node_into(&mut self, out: &mut NodeRec) -> Option<()> {
        self.op_into(&mut out.op)?;
        out.inputs.clear();
        for _ in 0..self.len(MAX_INPUTS)? {
            out.inputs.push(empty_operand()).ok()?;
            self.operand_into(out.inputs.last_mut()?)?;
        }
        self.operand_into(&mut out.output)
    }
}

/// An operand with no dimensions, to decode into.
pub(crate) fn empty_operand() -> Operand {
    Operand {
        id: 0,
        offset: 0,
        shape: heapless::Vec::new(),
    }
}

/// A node record to decode into (built field by field: a `const` record would be a
/// 400-byte constant copied from flash).
pub(crate) fn empty_node() -> NodeRec {
    NodeRec {
        op: OpRec::Add,
        inputs: heapless::Vec::new(),
        output: empty_operand(),
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use crate::error::Error;
    use std::vec::Vec;

    fn operand(id: u32, offset: u32, dims: &[u32]) -> Operand {
        Operand {
            id,
            offset,
            shape: dims.iter().copied().collect(),
        }
    }

    /// A node decoded over `into` (whatever it held), as a value.
    fn node(r: &mut Reader, into: &mut NodeRec) -> Result<NodeRec, Error> {
        r.node_into(into).ok_or(Error::Decode)?;
        Ok(into.clone())
    }

    /// postcard's encoding; an encoding failure leaves nothing to decode, which the
    /// assertions then report.
    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        postcard::to_allocvec(value).unwrap_or_default()
    }

    fn all_ops() -> Vec<OpRec> {
        let w = WRef {
            offset: 300,
            len: 1 << 31,
        };
        let p = PoolRec {
            kernel: [2, 3],
            stride: [1, 200],
            padding: [0, 1, 2, 3],
            count_include_pad: true,
        };
        Vec::from([
            OpRec::Dense {
                units: 10,
                inputs: 70000,
                weights: w,
                bias: w,
                act: Act::Clip {
                    min: -1.5,
                    max: 6.0,
                },
            },
            OpRec::Conv2d(ConvRec {
                out_channels: 16,
                in_channels: 3,
                kernel: [3, 1],
                stride: [2, 1],
                dilation: [1, 2],
                padding: [1, 0, 129, u32::MAX],
                groups: 1,
                weights: w,
                bias: w,
                act: Act::Sigmoid,
            }),
            OpRec::BatchNorm { scale: w, shift: w },
            OpRec::Activation(Act::Tanh),
            OpRec::Activation(Act::Relu),
            OpRec::Activation(Act::Identity),
            OpRec::Softmax { axis: 200 },
            OpRec::MaxPool(p),
            OpRec::AveragePool(PoolRec {
                count_include_pad: false,
                ..p
            }),
            OpRec::GlobalAveragePool,
            OpRec::Add,
            OpRec::Concat { axis: 1 },
            OpRec::Reshape,
            OpRec::Transpose {
                perm: [0, 2, 3, 1].into_iter().collect(),
            },
            OpRec::Pad {
                pads: [[0, 0], [1, 2], [300, 4]].into_iter().collect(),
                value: -0.25,
            },
        ])
    }

    #[test]
    fn decodes_what_postcard_encodes() {
        let head = DescHead {
            n_nodes: 3,
            input: operand(0, 0, &[1, 3, 8, 8]),
            output: operand(2, 1 << 20, &[1, 10]),
        };
        let bytes = encode(&head);
        let mut r = Reader { rest: &bytes };
        // Decoded over a head that holds other values.
        let mut got = DescHead {
            n_nodes: 7,
            input: operand(9, 9, &[1, 2, 3, 4, 5, 6]),
            output: operand(9, 9, &[1, 2, 3, 4, 5, 6]),
        };
        assert_eq!(r.head_into(&mut got), Some(()));
        assert_eq!(got, head);
        assert!(r.rest.is_empty());
        // One record decoded into, over and over: each decode overwrites all of it.
        let mut into = empty_node();
        for (i, op) in all_ops().into_iter().enumerate() {
            let rec = NodeRec {
                op,
                inputs: [
                    operand(i as u32, 5, &[1, 2]),
                    operand(0, 200_000, &[1, 2, 3, 4, 5, 6]),
                ]
                .into_iter()
                .collect(),
                output: operand(i as u32 + 1, u32::MAX, &[1]),
            };
            let bytes = encode(&rec);
            let mut r = Reader { rest: &bytes };
            assert_eq!(node(&mut r, &mut into), Ok(rec));
            assert!(r.rest.is_empty());
            // Every truncation fails, and agrees with postcard.
            for cut in 0..bytes.len() {
                let mut r = Reader {
                    rest: &bytes[..cut],
                };
                assert_eq!(node(&mut r, &mut into), Err(Error::Decode));
                assert!(postcard::from_bytes::<NodeRec>(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn agrees_with_postcard_on_arbitrary_bytes() {
        // A small xorshift over byte strings: both decoders accept the same prefixes and
        // produce the same records.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        // One record decoded into throughout, holding what earlier (possibly failed) decodes
        // left.
        let mut into = empty_node();
        for _ in 0..200_000 {
            let mut bytes = [0u8; 48];
            let len = (s % 48) as usize;
            for b in bytes.iter_mut() {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                *b = (s % 7) as u8 * 40;
                if s.is_multiple_of(5) {
                    *b = (s >> 8) as u8;
                }
            }
            let bytes = &bytes[..len];
            let mut r = Reader { rest: bytes };
            let ours = node(&mut r, &mut into).ok().map(|n| (n, r.rest.len()));
            let theirs = postcard::take_from_bytes::<NodeRec>(bytes)
                .ok()
                .map(|(n, rest)| (n, rest.len()));
            // Compared through Debug: a decoded NaN is not equal to itself.
            assert_eq!(
                std::format!("{ours:?}"),
                std::format!("{theirs:?}"),
                "{bytes:?}"
            );
        }
    }

    #[test]
    fn integers_agree_with_postcard() {
        // Every string of up to 6 bytes over values around the varint boundaries (one byte,
        // continuation, the fifth byte's 4 bits): same value, same bytes consumed, or both
        // refused.
        let values = [0x00u8, 0x01, 0x0F, 0x10, 0x7F, 0x80, 0x8F, 0xFF];
        for len in 0..=6u32 {
            for mut k in 0..values.len().pow(len) {
                let mut bytes = Vec::new();
                for _ in 0..len {
                    bytes.push(values[k % values.len()]);
                    k /= values.len();
                }
                let mut r = Reader { rest: &bytes };
                let ours = r.u32().map(|v| (v, r.rest.len()));
                let theirs = postcard::take_from_bytes::<u32>(&bytes)
                    .ok()
                    .map(|(v, rest)| (v, rest.len()));
                assert_eq!(ours, theirs, "u32 {bytes:02x?}");
                let mut r = Reader { rest: &bytes };
                let ours = r.len(usize::MAX).map(|v| (v, r.rest.len()));
                let theirs = postcard::take_from_bytes::<usize>(&bytes)
                    .ok()
                    .map(|(v, rest)| (v, rest.len()));
                assert_eq!(ours, theirs, "usize {bytes:02x?}");
            }
        }
    }
}
