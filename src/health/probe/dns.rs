//! `kind = "dns"`: one query over UDP or TCP (hickory-proto does the wire
//! format); up when the answer has the expected rcode and, if set, contains
//! the expected address.
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::time::Instant;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use hickory_proto::serialize::binary::BinDecodable;

use super::{connect, io_failure, read_until, remaining};
use crate::health::{DnsQuery, Failure};

pub(super) fn query(q: &DnsQuery, target: SocketAddr, deadline: Instant) -> Result<(), Failure> {
    let name = Name::from_str(&q.name)
        .map_err(|e| Failure::Io(format!("bad query name {:?}: {e}", q.name)))?;
    let id = fastrand::u16(..);
    let mut msg = Message::new();
    msg.set_id(id)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(name, RecordType::from(q.qtype)));
    let wire = msg
        .to_vec()
        .map_err(|e| Failure::Io(format!("cannot encode the query: {e}")))?;
    let answer = if q.tcp {
        over_tcp(&wire, target, deadline)?
    } else {
        over_udp(&wire, id, target, deadline)?
    };
    judge(q, id, &answer)
}

fn over_udp(
    wire: &[u8],
    id: u16,
    target: SocketAddr,
    deadline: Instant,
) -> Result<Vec<u8>, Failure> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(io_failure)?;
    sock.connect(target).map_err(io_failure)?;
    sock.send(wire).map_err(io_failure)?;
    let mut buf = vec![0u8; 65536];
    loop {
        sock.set_read_timeout(Some(remaining(deadline)?))
            .map_err(io_failure)?;
        let n = sock.recv(&mut buf).map_err(io_failure)?;
        // A late answer to an earlier query of this socket cannot exist (it
        // is fresh), but a spoofed or stray one may: match the id.
        if n >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == id {
            buf.truncate(n);
            return Ok(buf);
        }
    }
}

fn over_tcp(wire: &[u8], target: SocketAddr, deadline: Instant) -> Result<Vec<u8>, Failure> {
    let mut stream = connect(target, deadline)?;
    let len = u16::try_from(wire.len()).map_err(|_| Failure::Io("query too long".into()))?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(wire);
    stream.write_all(&framed).map_err(io_failure)?;
    let mut buf = Vec::new();
    let complete =
        |b: &[u8]| b.len() >= 2 && b.len() >= 2 + usize::from(u16::from_be_bytes([b[0], b[1]]));
    read_until(&mut stream, &mut buf, 2 + 65535, deadline, complete)?;
    if !complete(&buf) {
        return Err(Failure::BadResponse("connection closed mid-answer".into()));
    }
    let n = usize::from(u16::from_be_bytes([buf[0], buf[1]]));
    Ok(buf[2..2 + n].to_vec())
}

fn judge(q: &DnsQuery, id: u16, answer: &[u8]) -> Result<(), Failure> {
    let resp = Message::from_bytes(answer)
        .map_err(|e| Failure::BadResponse(format!("not a DNS message: {e}")))?;
    if resp.id() != id || resp.message_type() != MessageType::Response {
        return Err(Failure::BadResponse("not an answer to the query".into()));
    }
    let rcode = u16::from(resp.response_code());
    if rcode != q.rcode {
        return Err(Failure::BadResponse(format!(
            "rcode {}, expected {}",
            resp.response_code(),
            hickory_proto::op::ResponseCode::from(0, q.rcode as u8)
        )));
    }
    let Some(want) = q.expect_address else {
        return Ok(());
    };
    let found = resp.answers().iter().any(|r| match r.data() {
        RData::A(a) => IpAddr::V4(a.0) == want,
        RData::AAAA(a) => IpAddr::V6(a.0) == want,
        _ => false,
    });
    if found {
        Ok(())
    } else {
        Err(Failure::BodyMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::T;
    use super::*;
    use hickory_proto::op::ResponseCode;
    use hickory_proto::rr::{rdata::A, Record};

    /// The answer to `req`: `addr` as an A record, with `rcode`.
    fn answer(req: &[u8], addr: Ipv4Addr, rcode: ResponseCode) -> Option<Vec<u8>> {
        let req = Message::from_bytes(req).ok()?;
        let mut resp = Message::new();
        resp.set_id(req.id())
            .set_message_type(MessageType::Response)
            .set_response_code(rcode)
            .add_queries(req.queries().to_vec());
        if let Some(q) = req.queries().first() {
            resp.add_answer(Record::from_rdata(q.name().clone(), 60, RData::A(A(addr))));
        }
        resp.to_vec().ok()
    }

    /// A UDP responder answering every query with `addr` and `rcode`.
    fn responder(addr: Ipv4Addr, rcode: ResponseCode) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let local = s.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut b = [0u8; 512];
            while let Ok((n, from)) = s.recv_from(&mut b) {
                if let Some(a) = answer(&b[..n], addr, rcode) {
                    let _ = s.send_to(&a, from);
                }
            }
        });
        local
    }

    #[test]
    fn tcp_transport_frames_query_and_answer() {
        use std::io::Read;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let local = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut req = vec![0u8; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut req).unwrap();
            let a = answer(&req, Ipv4Addr::new(198, 18, 0, 20), ResponseCode::NoError).unwrap();
            let mut framed = (a.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&a);
            s.write_all(&framed).unwrap();
        });
        let q = DnsQuery {
            tcp: true,
            ..q(Some([198, 18, 0, 20]), 0)
        };
        assert_eq!(query(&q, local, Instant::now() + T), Ok(()));
    }

    fn q(expect: Option<[u8; 4]>, rcode: u16) -> DnsQuery {
        DnsQuery {
            name: "www.example.com.".into(),
            qtype: 1,
            tcp: false,
            rcode,
            expect_address: expect.map(IpAddr::from),
        }
    }

    #[test]
    fn answer_rcode_and_address_are_judged() {
        let addr = responder(Ipv4Addr::new(198, 18, 0, 20), ResponseCode::NoError);
        let at = || Instant::now() + T;
        assert_eq!(query(&q(None, 0), addr, at()), Ok(()));
        assert_eq!(query(&q(Some([198, 18, 0, 20]), 0), addr, at()), Ok(()));
        assert_eq!(
            query(&q(Some([198, 18, 0, 21]), 0), addr, at()),
            Err(Failure::BodyMismatch)
        );
        assert!(matches!(
            query(&q(None, 3), addr, at()),
            Err(Failure::BadResponse(_))
        ));
        let nx = responder(Ipv4Addr::new(198, 18, 0, 20), ResponseCode::NXDomain);
        assert_eq!(query(&q(None, 3), nx, at()), Ok(()));
    }

    #[test]
    fn garbage_is_bad_response() {
        assert!(matches!(
            judge(&q(None, 0), 1, b"\x00\x01zz"),
            Err(Failure::BadResponse(_))
        ));
    }
}
