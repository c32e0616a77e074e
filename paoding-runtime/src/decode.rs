//! A compact hand-written decoder for the description's postcard encoding (the writer uses
//! serde + postcard; serde's generated visitors would cost kilobytes of flash here).
//!
//! postcard's rules, as the records use them: unsigned integers above `u8` are LEB128
//! varints (`u32`: at most 5 bytes, no bits beyond 32), `i32` a zigzag-encoded varint, `u8`
//! and `i8` one byte, `bool` one byte 0 or 1, `f32` four little-endian bytes, enum variants a
//! varint index, sequences (`heapless::Vec`) a varint length then the elements, arrays and
//! structs their fields in order.
//!
//! A version 2 description is read into the same records: its operands carry no dtype (f32)
//! and its arena and weight offsets count f32 elements, which the reader turns into bytes.

use crate::format::{
    Act, ConvParams, ConvRec, DescHead, Dtype, NodeRec, OpRec, Operand, PoolRec, QAddRec, QConvRec,
    QRescale, QuantParams, RequantRec, WRef, MAX_INPUTS, MAX_RANK,
};
use crate::kernels::splat;

/// A cursor over encoded bytes; every read fails past the end. The reads return `Option`
/// (a one-register `?`); the entry points' callers turn `None` into `Error::Decode`.
pub(crate) struct Reader<'a> {
    pub rest: &'a [u8],
    /// A version 2 description: offsets in f32 elements, no dtypes.
    pub v2: bool,
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

    /// An `i32`: postcard's zigzag varint.
    #[inline(never)]
    fn i32(&mut self) -> Option<i32> {
        let z = self.u32()?;
        Some((z >> 1) as i32 ^ -((z & 1) as i32))
    }

    /// Consecutive `i32` fields.
    fn i32s<const N: usize>(&mut self) -> Option<[i32; N]> {
        let mut a = splat(0);
        self.fill_i32(&mut a)?;
        Some(a)
    }

    /// Consecutive `i32` fields into `out` (one loop for every record's).
    #[inline(never)]
    fn fill_i32(&mut self, out: &mut [i32]) -> Option<()> {
        for x in out.iter_mut() {
            *x = self.i32()?;
        }
        Some(())
    }

    fn i8(&mut self) -> Option<i8> {
        Some(self.byte()? as i8)
    }

    /// An offset in bytes: a version 2 offset (f32 elements) times 4, refused past 32 bits.
    fn offset(&mut self) -> Option<u32> {
        let o = self.u32()?;
        if self.v2 {
            o.checked_mul(4)
        } else {
            Some(o)
        }
    }

    /// A weights reference.
    #[inline(never)]
    fn wref(&mut self) -> Option<WRef> {
        Some(WRef {
            offset: self.offset()?,
            len: self.u32()?,
        })
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
        let mut a = splat(0);
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
            5 => Act::LeakyRelu { alpha: self.f32()? },
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

    #[inline(never)]
    fn quant_params(&mut self) -> Option<QuantParams> {
        Some(QuantParams {
            scale: self.f32()?,
            zero_point: self.i32()?,
        })
    }

    /// The quantization of the graph's input or output of dtype `dtype`, an
    /// `Option<QuantParams>` (a tag byte 0 or 1, then the value): present with a finite
    /// positive scale and an int8 zero point for int8, absent for f32.
    fn io_quant(&mut self, dtype: Dtype) -> Option<Option<QuantParams>> {
        // The tag is the dtype's code: 0 (f32) for `None`, 1 (int8) for `Some`.
        let tag = self.byte()?;
        if tag != dtype as u8 {
            return None;
        }
        if tag == 0 {
            return Some(None);
        }
        let q = self.quant_params()?;
        (q.valid()).then_some(Some(q))
    }

    fn requant(&mut self) -> Option<RequantRec> {
        let params = self.wref()?;
        let [input_zp, output_zp, act_min, act_max] = self.i32s()?;
        Some(RequantRec {
            params,
            input_zp,
            output_zp,
            act_min,
            act_max,
        })
    }

    /// A convolution's geometry.
    #[inline(never)]
    fn conv_params(&mut self) -> Option<ConvParams> {
        let [oc, ic, kh, kw, sy, sx, dy, dx, pt, pl, pb, pr, groups] = self.u32s()?;
        Some(ConvParams {
            out_channels: oc,
            in_channels: ic,
            kernel: [kh, kw],
            stride: [sy, sx],
            dilation: [dy, dx],
            padding: [pt, pl, pb, pr],
            groups,
        })
    }

    /// Per-axis `[before, after]` paddings into `pads`.
    fn pads(&mut self, pads: &mut heapless::Vec<[u32; 2], MAX_RANK>) -> Option<()> {
        for _ in 0..self.len(MAX_RANK)? {
            pads.push(self.u32s()?).ok()?;
        }
        Some(())
    }

    /// An operand, decoded over `out`.
    fn operand_into(&mut self, out: &mut Operand) -> Option<()> {
        out.id = self.u32()?;
        out.offset = self.offset()?;
        out.dtype = if self.v2 {
            Dtype::F32
        } else {
            match self.u32()? {
                0 => Dtype::F32,
                1 => Dtype::I8,
                _ => return None,
            }
        };
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
                let [units, inputs] = self.u32s()?;
                *out = OpRec::Dense {
                    units,
                    inputs,
                    weights: self.wref()?,
                    bias: self.wref()?,
                    act: self.act()?,
                };
            }
            1 => {
                *out = OpRec::Conv2d(ConvRec {
                    params: self.conv_params()?,
                    weights: self.wref()?,
                    bias: self.wref()?,
                    act: self.act()?,
                });
            }
            2 => {
                *out = OpRec::BatchNorm {
                    scale: self.wref()?,
                    shift: self.wref()?,
                };
            }
            3 => *out = OpRec::Activation(self.act()?),
            4 => *out = OpRec::Softmax { axis: self.byte()? },
            k @ (5 | 6) => {
                let p = self.pool()?;
                *out = if k == 5 {
                    OpRec::MaxPool(p)
                } else {
                    OpRec::AveragePool(p)
                };
            }
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
                self.pads(pads)?;
                *value = self.f32()?;
            }
            13 => {
                let [units, inputs] = self.u32s()?;
                *out = OpRec::QDense {
                    units,
                    inputs,
                    weights: self.wref()?,
                    quant: self.requant()?,
                };
            }
            14 => {
                *out = OpRec::QConv2d(QConvRec {
                    params: self.conv_params()?,
                    weights: self.wref()?,
                    quant: self.requant()?,
                });
            }
            15 => {
                let [z1, m1, s1, z2, m2, s2, left_shift, om, os, ozp, min, max] = self.i32s()?;
                *out = OpRec::QAdd(QAddRec {
                    input1: QRescale {
                        zp: z1,
                        multiplier: m1,
                        shift: s1,
                    },
                    input2: QRescale {
                        zp: z2,
                        multiplier: m2,
                        shift: s2,
                    },
                    left_shift,
                    output_multiplier: om,
                    output_shift: os,
                    output_zp: ozp,
                    act_min: min,
                    act_max: max,
                });
            }
            16 => {
                *out = OpRec::QConcat {
                    axis: self.byte()?,
                    rescales: self.wref()?,
                    output_zp: self.i32()?,
                };
            }
            17 => {
                *out = OpRec::QPad {
                    pads: heapless::Vec::new(),
                    value: 0,
                };
                let OpRec::QPad { pads, value } = out else {
                    return None;
                };
                self.pads(pads)?;
                *value = self.i8()?;
            }
            18 => {
                let [min, max] = self.i32s()?;
                *out = OpRec::QClamp { min, max };
            }
            19 => *out = OpRec::Quantize(self.quant_params()?),
            20 => *out = OpRec::Dequantize(self.quant_params()?),
            21 => {
                let axis = self.byte()?;
                let [input_multiplier, input_left_shift, diff_min] = self.i32s()?;
                *out = OpRec::QSoftmax {
                    axis,
                    input_multiplier,
                    input_left_shift,
                    diff_min,
                };
            }
            _ => return None,
        }
        Some(())
    }

    /// The description's first record, decoded over `out`.
    pub fn head_into(&mut self, out: &mut DescHead) -> Option<()> {
        out.n_nodes = self.u32()?;
        self.operand_into(&mut out.input)?;
        self.operand_into(&mut out.output)?;
        if self.v2 {
            out.input_quant = None;
            out.output_quant = None;
        } else {
            out.input_quant = self.io_quant(out.input.dtype)?;
            out.output_quant = self.io_quant(out.output.dtype)?;
        }
        Some(())
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
        dtype: Dtype::F32,
        shape: heapless::Vec::new(),
    }
}

/// A node record to decode into (built field by field: a `const` record would be a
/// 400-byte constant copied from flash).
// Out of line (flash): each caller had its own copy of the field-by-field build.
#[inline(never)]
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
            dtype: if id.is_multiple_of(2) {
                Dtype::F32
            } else {
                Dtype::I8
            },
            shape: dims.iter().copied().collect(),
        }
    }

    fn reader(rest: &[u8]) -> Reader<'_> {
        Reader { rest, v2: false }
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
                params: ConvParams {
                    out_channels: 16,
                    in_channels: 3,
                    kernel: [3, 1],
                    stride: [2, 1],
                    dilation: [1, 2],
                    padding: [1, 0, 129, u32::MAX],
                    groups: 1,
                },
                weights: w,
                bias: w,
                act: Act::Sigmoid,
            }),
            OpRec::BatchNorm { scale: w, shift: w },
            OpRec::Activation(Act::Tanh),
            OpRec::Activation(Act::Relu),
            OpRec::Activation(Act::Identity),
            OpRec::Activation(Act::LeakyRelu { alpha: 0.125 }),
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
            OpRec::QDense {
                units: 3,
                inputs: 1 << 20,
                weights: w,
                quant: requant(),
            },
            OpRec::QConv2d(QConvRec {
                params: ConvParams {
                    out_channels: 8,
                    in_channels: 8,
                    kernel: [3, 3],
                    stride: [2, 2],
                    dilation: [1, 1],
                    padding: [1, 1, 1, 1],
                    groups: 8,
                },
                weights: w,
                quant: requant(),
            }),
            OpRec::QAdd(QAddRec {
                input1: rescale(-128),
                input2: rescale(127),
                left_shift: 20,
                output_multiplier: i32::MAX,
                output_shift: -31,
                output_zp: -1,
                act_min: -128,
                act_max: 127,
            }),
            OpRec::QConcat {
                axis: 1,
                rescales: w,
                output_zp: 3,
            },
            OpRec::QPad {
                pads: [[0, 0], [1, 2]].into_iter().collect(),
                value: -128,
            },
            OpRec::QClamp { min: -3, max: 6 },
            OpRec::Quantize(QuantParams {
                scale: 0.02,
                zero_point: -128,
            }),
            OpRec::Dequantize(QuantParams {
                scale: 1.5e-3,
                zero_point: 127,
            }),
            OpRec::QSoftmax {
                axis: 1,
                input_multiplier: 1 << 30,
                input_left_shift: 23,
                diff_min: -248,
            },
        ])
    }

    fn rescale(zp: i32) -> QRescale {
        QRescale {
            zp,
            multiplier: 1_610_612_736,
            shift: -7,
        }
    }

    fn requant() -> RequantRec {
        RequantRec {
            params: WRef {
                offset: 1 << 28,
                len: 24,
            },
            input_zp: -3,
            output_zp: 100,
            act_min: -20,
            act_max: 90,
        }
    }

    #[test]
    fn decodes_what_postcard_encodes() {
        let q = |scale, zero_point| Some(QuantParams { scale, zero_point });
        // f32 io (even ids), and int8 io with its quantization (odd ids).
        for (ids, input_quant, output_quant) in [
            ([0, 2], None, None),
            ([1, 3], q(0.5, -3), q(1.0 / 256.0, -128)),
        ] {
            let head = DescHead {
                n_nodes: 3,
                input: operand(ids[0], 0, &[1, 3, 8, 8]),
                output: operand(ids[1], 1 << 20, &[1, 10]),
                input_quant,
                output_quant,
            };
            let bytes = encode(&head);
            let mut r = reader(&bytes);
            // Decoded over a head that holds other values.
            let mut got = DescHead {
                n_nodes: 7,
                input: operand(9, 9, &[1, 2, 3, 4, 5, 6]),
                output: operand(9, 9, &[1, 2, 3, 4, 5, 6]),
                input_quant: q(2.0, 5),
                output_quant: None,
            };
            assert_eq!(r.head_into(&mut got), Some(()));
            assert_eq!(got, head);
            assert!(r.rest.is_empty());
            for cut in 0..bytes.len() {
                assert_eq!(reader(&bytes[..cut]).head_into(&mut got), None);
            }
        }
        // The io quantization must match the dtype and be valid.
        let head = |input: Operand, input_quant| DescHead {
            n_nodes: 1,
            input,
            output: operand(2, 0, &[1, 2]),
            input_quant,
            output_quant: None,
        };
        let mut got = head(operand(0, 0, &[1]), None);
        for bad in [
            head(operand(0, 0, &[1, 2]), q(0.5, 0)),
            head(operand(1, 0, &[1, 2]), None),
            head(operand(1, 0, &[1, 2]), q(0.0, 0)),
            head(operand(1, 0, &[1, 2]), q(f32::INFINITY, 0)),
            head(operand(1, 0, &[1, 2]), q(-1.0, 0)),
            head(operand(1, 0, &[1, 2]), q(1.0, 128)),
        ] {
            assert_eq!(reader(&encode(&bad)).head_into(&mut got), None, "{bad:?}");
        }
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
            let mut r = reader(&bytes);
            assert_eq!(node(&mut r, &mut into), Ok(rec));
            assert!(r.rest.is_empty());
            // Every truncation fails, and agrees with postcard.
            for cut in 0..bytes.len() {
                let mut r = reader(&bytes[..cut]);
                assert_eq!(node(&mut r, &mut into), Err(Error::Decode));
                assert!(postcard::from_bytes::<NodeRec>(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn version_2_offsets_count_f32_and_operands_are_f32() {
        // An operand as version 2 wrote it: id 3, offset 10 (elements), shape [1, 2].
        let bytes = [3u8, 10, 2, 1, 2];
        let mut r = Reader {
            rest: &bytes,
            v2: true,
        };
        let mut got = empty_operand();
        assert_eq!(r.operand_into(&mut got), Some(()));
        assert_eq!(got, {
            let mut o = operand(3, 40, &[1, 2]);
            o.dtype = Dtype::F32;
            o
        });
        // A weights reference: offset 5 elements = 20 bytes; offsets past 2^30 elements do
        // not fit in bytes.
        let mut r = Reader {
            rest: &[5, 7],
            v2: true,
        };
        assert_eq!(r.wref(), Some(WRef { offset: 20, len: 7 }));
        let huge = [0x80, 0x80, 0x80, 0x80, 0x04, 1];
        let mut r = Reader {
            rest: &huge,
            v2: true,
        };
        assert_eq!(r.wref(), None);
        // The same bytes in version 3 and later read as they are.
        assert_eq!(
            reader(&huge).wref(),
            Some(WRef {
                offset: 1 << 30,
                len: 1
            })
        );
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
            let mut r = reader(bytes);
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
                let mut r = reader(&bytes);
                let ours = r.u32().map(|v| (v, r.rest.len()));
                let theirs = postcard::take_from_bytes::<u32>(&bytes)
                    .ok()
                    .map(|(v, rest)| (v, rest.len()));
                assert_eq!(ours, theirs, "u32 {bytes:02x?}");
                let mut r = reader(&bytes);
                let ours = r.len(usize::MAX).map(|v| (v, r.rest.len()));
                let theirs = postcard::take_from_bytes::<usize>(&bytes)
                    .ok()
                    .map(|(v, rest)| (v, rest.len()));
                assert_eq!(ours, theirs, "usize {bytes:02x?}");
            }
        }
    }
}
