//! Outgoing string and binary fields over 65,535 bytes: rumqttc writes
//! `len as u16` and the full bytes, a corrupt packet. Refused before
//! anything is written.

use rumqttc::v5::mqttbytes::v5::Packet;

use super::V5Error;
use crate::protocol::codec::MAX_STRING_LEN;

fn max(field: &'static str, len: usize) -> Result<(), V5Error> {
    if len > MAX_STRING_LEN {
        Err(V5Error::StringTooLong { field, len })
    } else {
        Ok(())
    }
}

fn opt<T: AsRef<[u8]>>(field: &'static str, v: &Option<T>) -> Result<(), V5Error> {
    v.as_ref().map_or(Ok(()), |s| max(field, s.as_ref().len()))
}

fn user(props: &[(String, String)]) -> Result<(), V5Error> {
    props.iter().try_for_each(|(k, v)| {
        max("user property name", k.len())?;
        max("user property value", v.len())
    })
}

/// Every string and binary field of `packet` fits its `u16` length prefix.
pub(super) fn check(packet: &Packet) -> Result<(), V5Error> {
    match packet {
        Packet::Connect(c, will, login) => {
            max("client id", c.client_id.len())?;
            if let Some(p) = &c.properties {
                opt("authentication method", &p.authentication_method)?;
                opt("authentication data", &p.authentication_data)?;
                user(&p.user_properties)?;
            }
            if let Some(w) = will {
                max("will topic", w.topic.len())?;
                max("will payload", w.message.len())?;
                if let Some(p) = &w.properties {
                    opt("content type", &p.content_type)?;
                    opt("response topic", &p.response_topic)?;
                    opt("correlation data", &p.correlation_data)?;
                    user(&p.user_properties)?;
                }
            }
            if let Some(l) = login {
                max("user name", l.username.len())?;
                max("password", l.password.len())?;
            }
            Ok(())
        }
        Packet::ConnAck(c) => c.properties.as_ref().map_or(Ok(()), |p| {
            opt("assigned client identifier", &p.assigned_client_identifier)?;
            opt("reason string", &p.reason_string)?;
            opt("response information", &p.response_information)?;
            opt("server reference", &p.server_reference)?;
            opt("authentication method", &p.authentication_method)?;
            opt("authentication data", &p.authentication_data)?;
            user(&p.user_properties)
        }),
        Packet::Publish(p) => {
            max("topic", p.topic.len())?;
            p.properties.as_ref().map_or(Ok(()), |p| {
                opt("content type", &p.content_type)?;
                opt("response topic", &p.response_topic)?;
                opt("correlation data", &p.correlation_data)?;
                user(&p.user_properties)
            })
        }
        Packet::PubAck(a) => reason_props(
            a.properties
                .as_ref()
                .map(|p| (&p.reason_string, &p.user_properties)),
        ),
        Packet::PubRec(a) => reason_props(
            a.properties
                .as_ref()
                .map(|p| (&p.reason_string, &p.user_properties)),
        ),
        Packet::PubRel(a) => reason_props(
            a.properties
                .as_ref()
                .map(|p| (&p.reason_string, &p.user_properties)),
        ),
        Packet::PubComp(a) => reason_props(
            a.properties
                .as_ref()
                .map(|p| (&p.reason_string, &p.user_properties)),
        ),
        Packet::SubAck(a) => reason_props(
            a.properties
                .as_ref()
                .map(|p| (&p.reason_string, &p.user_properties)),
        ),
        Packet::UnsubAck(a) => reason_props(
            a.properties
                .as_ref()
                .map(|p| (&p.reason_string, &p.user_properties)),
        ),
        Packet::Subscribe(s) => {
            s.filters
                .iter()
                .try_for_each(|f| max("topic filter", f.path.len()))?;
            s.properties
                .as_ref()
                .map_or(Ok(()), |p| user(&p.user_properties))
        }
        Packet::Unsubscribe(u) => {
            u.filters
                .iter()
                .try_for_each(|f| max("topic filter", f.len()))?;
            u.properties
                .as_ref()
                .map_or(Ok(()), |p| user(&p.user_properties))
        }
        Packet::Disconnect(d) => d.properties.as_ref().map_or(Ok(()), |p| {
            opt("reason string", &p.reason_string)?;
            opt("server reference", &p.server_reference)?;
            user(&p.user_properties)
        }),
        Packet::Auth(a) => a.properties.as_ref().map_or(Ok(()), |p| {
            opt("authentication method", &p.method)?;
            opt("authentication data", &p.data)?;
            opt("reason string", &p.reason)?;
            user(&p.user_properties)
        }),
        Packet::PingReq(_) | Packet::PingResp(_) => Ok(()),
    }
}

/// The reason string and user properties of an ack's properties.
type AckProps<'a> = (&'a Option<String>, &'a Vec<(String, String)>);

fn reason_props(p: Option<AckProps<'_>>) -> Result<(), V5Error> {
    p.map_or(Ok(()), |(reason, props)| {
        opt("reason string", reason)?;
        user(props)
    })
}
