//! Interfaces of the current network namespace (of the calling thread): which exist, which are up.

use std::{collections::BTreeSet, ffi::CStr, ffi::CString, io};

/// Names of the interfaces that are up, loopback included, sorted.
pub(crate) fn up_interfaces() -> io::Result<Vec<String>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let mut names = BTreeSet::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_name.is_null() && ifa.ifa_flags & libc::IFF_UP as libc::c_uint != 0 {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            let name = unsafe { CStr::from_ptr(ifa.ifa_name) };
            names.insert(name.to_string_lossy().into_owned());
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(names.into_iter().collect())
}

/// Whether an interface of this name exists in the current network namespace.
pub(crate) fn exists(name: &str) -> bool {
    let Ok(c) = CString::new(name) else { return false };
    // SAFETY: `c` is a valid NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_exists_and_nonsense_does_not() {
        assert!(exists("lo"));
        assert!(!exists("l7mp-nope0"));
        assert!(!exists("bad\0name"));
        assert!(up_interfaces().is_ok_and(|v| v.iter().any(|n| n == "lo")));
    }
}
