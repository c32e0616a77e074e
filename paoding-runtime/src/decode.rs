//! A compact hand-written decoder for the description's postcard encoding (the writer uses
//! serde + postcard; serde's generated visitors would cost kilobytes of flash here).
//!
//! postcard's rules, as the records use them: unsigned integers above `u8` are LEB128
//! varints (`u32`: at most 5 bytes, no bits beyond 32), `u8` is one byte, `bool` one byte 0 or
//! 1, `f32` four little-endian bytes, enum variants a varint index, sequences (`heapless::Vec`)
//! a varint length then the elements, arrays and structs their fields in order.

use crate::error::Error;
use crate::format::{Act, ConvRec, DescHead, NodeRec, OpRec, Operand, PoolRec, WRef};

/// A cursor over encoded bytes; every read fails with [`Error::Decode`] past the end.
pub(crate) struct Reader<'a> {
    pub rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, Error> {
        let (&b, rest) = self.rest.split_first().ok_or(Error::Decode)?;
        self.rest = rest;
        Ok(b)
    }

    /// A LEB128 varint of an integer of `bits` bits (postcard rejects overlong encodings and
    /// bits beyond the type).
    fn varint(&mut self, bits: u32) -> Result<u64, Error> {
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
                return Ok(v);
            }
        }
        Err(Error::Decode)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        Ok(self.varint(32)? as u32)
    }

    fn f32(&mut self) -> Result<f32, Error> {
        let (b, rest) = self.rest.split_first_chunk::<4>().ok_or(Error::Decode)?;
        self.rest = rest;
        Ok(f32::from_le_bytes(*b))
    }

    fn bool(&mut self) -> Result<bool, Error> {
        match self.byte()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(Error::Decode),
        }
    }

    fn u32s<const N: usize>(&mut self) -> Result<[u32; N], Error> {
        let mut a = [0; N];
        for x in a.iter_mut() {
            *x = self.u32()?;
        }
        Ok(a)
    }

    /// A sequence length, checked against the capacity `cap`.
    fn len(&mut self, cap: usize) -> Result<usize, Error> {
        let n = self.varint(usize::BITS)?;
        if n > cap as u64 {
            return Err(Error::Decode);
        }
        Ok(n as usize)
    }

    fn wref(&mut self) -> Result<WRef, Error> {
        Ok(WRef {
            offset: self.u32()?,
            len: self.u32()?,
        })
    }

    fn act(&mut self) -> Result<Act, Error> {
        Ok(match self.u32()? {
            0 => Act::Identity,
            1 => Act::Relu,
            2 => Act::Clip {
                min: self.f32()?,
                max: self.f32()?,
            },
            3 => Act::Sigmoid,
            4 => Act::Tanh,
            _ => return Err(Error::Decode),
        })
    }

    fn pool(&mut self) -> Result<PoolRec, Error> {
        Ok(PoolRec {
            kernel: self.u32s()?,
            stride: self.u32s()?,
            padding: self.u32s()?,
            count_include_pad: self.bool()?,
        })
    }

    fn operand(&mut self) -> Result<Operand, Error> {
        let id = self.u32()?;
        let offset = self.u32()?;
        let mut shape = heapless::Vec::new();
        for _ in 0..self.len(shape.capacity())? {
            shape.push(self.u32()?).map_err(|_| Error::Decode)?;
        }
        Ok(Operand { id, offset, shape })
    }

    fn op(&mut self) -> Result<OpRec, Error> {
        Ok(match self.u32()? {
            0 => OpRec::Dense {
                units: self.u32()?,
                inputs: self.u32()?,
                weights: self.wref()?,
                bias: self.wref()?,
                act: self.act()?,
            },
            1 => OpRec::Conv2d(ConvRec {
                out_channels: self.u32()?,
                in_channels: self.u32()?,
                kernel: self.u32s()?,
                stride: self.u32s()?,
                dilation: self.u32s()?,
                padding: self.u32s()?,
                groups: self.u32()?,
                weights: self.wref()?,
                bias: self.wref()?,
                act: self.act()?,
            }),
            2 => OpRec::BatchNorm {
                scale: self.wref()?,
                shift: self.wref()?,
            },
            3 => OpRec::Activation(self.act()?),
            4 => OpRec::Softmax { axis: self.byte()? },
            5 => OpRec::MaxPool(self.pool()?),
            6 => OpRec::AveragePool(self.pool()?),
            7 => OpRec::GlobalAveragePool,
            8 => OpRec::Add,
            9 => OpRec::Concat { axis: self.byte()? },
            10 => OpRec::Reshape,
            11 => {
                let mut perm = heapless::Vec::new();
                for _ in 0..self.len(perm.capacity())? {
                    perm.push(self.byte()?).map_err(|_| Error::Decode)?;
                }
                OpRec::Transpose { perm }
            }
            12 => {
                let mut pads = heapless::Vec::new();
                for _ in 0..self.len(pads.capacity())? {
                    pads.push(self.u32s()?).map_err(|_| Error::Decode)?;
                }
                OpRec::Pad {
                    pads,
                    value: self.f32()?,
                }
            }
            _ => return Err(Error::Decode),
        })
    }

    /// The description's first record.
    pub fn head(&mut self) -> Result<DescHead, Error> {
        Ok(DescHead {
            n_nodes: self.u32()?,
            input: self.operand()?,
            output: self.operand()?,
        })
    }

    /// One node record.
    #[inline(never)]
    pub fn node(&mut self) -> Result<NodeRec, Error> {
        let op = self.op()?;
        let mut inputs = heapless::Vec::new();
        for _ in 0..self.len(inputs.capacity())? {
            inputs.push(self.operand()?).map_err(|_| Error::Decode)?;
        }
        Ok(NodeRec {
            op,
            inputs,
            output: self.operand()?,
        })
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn operand(id: u32, offset: u32, dims: &[u32]) -> Operand {
        Operand {
            id,
            offset,
            shape: dims.iter().copied().collect(),
        }
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
        assert_eq!(r.head(), Ok(head));
        assert!(r.rest.is_empty());
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
            assert_eq!(r.node(), Ok(rec));
            assert!(r.rest.is_empty());
            // Every truncation fails, and agrees with postcard.
            for cut in 0..bytes.len() {
                let mut r = Reader {
                    rest: &bytes[..cut],
                };
                assert_eq!(r.node(), Err(Error::Decode));
                assert!(postcard::from_bytes::<NodeRec>(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn agrees_with_postcard_on_arbitrary_bytes() {
        // A small xorshift over byte strings: both decoders accept the same prefixes and
        // produce the same records.
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
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
            let ours = r.node().ok().map(|n| (n, r.rest.len()));
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
}
