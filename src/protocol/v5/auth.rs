//! AUTH, which rumqttc 0.25 cannot read or write with properties: its
//! property reader skips the length prefixes of strings (and so reads
//! past them) and its size omits them (a wrong remaining length). Its
//! reason code and property types are private (not re-exported), so the
//! code byte goes through rumqttc's property-less form and the property
//! struct is reached by inference; the properties are read and written
//! here. Only
//! called on frames [`super::raw`] has already checked.

use bytes::{BufMut, Bytes, BytesMut};
use rumqttc::v5::mqttbytes::{
    self,
    v5::{Auth, FixedHeader},
};

use super::V5Error;
use crate::protocol::codec::put_vbi;

fn malformed() -> V5Error {
    V5Error::Codec(mqttbytes::Error::MalformedPacket)
}

/// A tiny cursor over checked bytes.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], V5Error> {
        if self.0.len() < n {
            return Err(malformed());
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn binary(&mut self) -> Result<&'a [u8], V5Error> {
        let len = self.take(2)?;
        self.take(usize::from(u16::from_be_bytes([len[0], len[1]])))
    }

    fn string(&mut self) -> Result<String, V5Error> {
        String::from_utf8(self.binary()?.to_vec()).map_err(|_| malformed())
    }

    fn vbi(&mut self) -> Result<usize, V5Error> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.take(1)?[0];
            value |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(malformed())
    }
}

/// Decodes an AUTH `body` (after the fixed header; at least 1 byte).
pub(super) fn read(body: &[u8]) -> Result<Auth, V5Error> {
    let code = body.first().copied().unwrap_or(0);
    let short = Bytes::from(vec![0xf0, 2, code, 0]);
    let mut auth = Auth::read(FixedHeader::new(0xf0, 1, 2), short).map_err(V5Error::Codec)?;
    let mut r = Cur(body.get(1..).unwrap_or_default());
    if r.0.is_empty() {
        return Ok(auth);
    }
    let len = r.vbi()?;
    let mut p = Cur(r.take(len)?);
    let mut props = auth.properties.take().unwrap_or_default();
    while !p.0.is_empty() {
        match p.take(1)?[0] {
            0x15 => props.method = Some(p.string()?),
            0x16 => props.data = Some(Bytes::copy_from_slice(p.binary()?)),
            0x1F => props.reason = Some(p.string()?),
            0x26 => {
                let k = p.string()?;
                let v = p.string()?;
                props.user_properties.push((k, v));
            }
            _ => return Err(malformed()),
        }
    }
    auth.properties = (len > 0).then_some(props);
    Ok(auth)
}

/// Encodes `auth` at the end of `buf`.
pub(super) fn write(auth: &Auth, buf: &mut BytesMut) -> Result<(), V5Error> {
    let mut short = BytesMut::new();
    Auth {
        code: auth.code.clone(),
        properties: None,
    }
    .write(&mut short)
    .map_err(V5Error::Codec)?;
    let code = short.get(2).copied().ok_or_else(malformed)?;
    let mut props = BytesMut::new();
    if let Some(p) = &auth.properties {
        let string = |out: &mut BytesMut, id: u8, v: &[u8]| {
            out.put_u8(id);
            out.put_u16(v.len() as u16);
            out.extend_from_slice(v);
        };
        if let Some(m) = &p.method {
            string(&mut props, 0x15, m.as_bytes());
        }
        if let Some(d) = &p.data {
            string(&mut props, 0x16, d);
        }
        if let Some(r) = &p.reason {
            string(&mut props, 0x1F, r.as_bytes());
        }
        for (k, v) in &p.user_properties {
            string(&mut props, 0x26, k.as_bytes());
            props.put_u16(v.len() as u16);
            props.extend_from_slice(v.as_bytes());
        }
    }
    let mut body = BytesMut::new();
    body.put_u8(code);
    put_vbi(&mut body, props.len());
    body.extend_from_slice(&props);
    buf.put_u8(0xf0);
    put_vbi(buf, body.len());
    buf.extend_from_slice(&body);
    Ok(())
}
