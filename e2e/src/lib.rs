//! End-to-end test harness: network namespaces, veth pairs, real servers and clients.
