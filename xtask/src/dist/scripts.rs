//! The package's maintainer scripts: what Debian's nginx and haproxy packages run, i.e.
//! dh_installsystemd's snippets (deb-systemd-helper, deb-systemd-invoke; restart after upgrade,
//! which the unit's socket handover makes drop-free), plus the system user (sysusers.d), its
//! directories (tmpfiles.d) and the config's group (dpkg-statoverride, kept across upgrades).

use super::STAT_OVERRIDES;

const UNIT: &str = "gatewayd.service";

/// (file name in DEBIAN/, text)
pub fn all() -> Vec<(&'static str, String)> {
    vec![("postinst", postinst()), ("prerm", prerm()), ("postrm", postrm())]
}

fn postinst() -> String {
    let overrides: String = STAT_OVERRIDES
        .iter()
        .map(|(owner, group, mode, path)| {
            format!(
                "\tif ! dpkg-statoverride --list '{path}' >/dev/null; then\n\
                 \t\tdpkg-statoverride --update --add {owner} {group} {mode} '{path}'\n\
                 \tfi\n"
            )
        })
        .collect();
    format!(
        r#"#!/bin/sh
set -e

if [ "$1" = "configure" ]; then
	# The gatewayd system user and group, and the directories it writes.
	systemd-sysusers gatewayd.conf
	systemd-tmpfiles --create gatewayd.conf || true
	# kTLS now, not only from the next boot (modules-load.d); harmless where there is no module.
	modprobe -q tls 2>/dev/null || true
	# The service reads its config as group gatewayd.
{overrides}fi

# Automatically added by dh_installsystemd
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	# This will only remove masks created by d-s-h on package removal.
	deb-systemd-helper unmask '{UNIT}' >/dev/null || true

	# was-enabled defaults to true, so new installations run enable.
	if deb-systemd-helper --quiet was-enabled '{UNIT}'; then
		# Enables the unit on first installation, creates new
		# symlinks on upgrades if the unit file has changed.
		deb-systemd-helper enable '{UNIT}' >/dev/null || true
	else
		# Update the statefile to add new symlinks (if any), which need to be
		# cleaned up on purge. Also remove old symlinks.
		deb-systemd-helper update-state '{UNIT}' >/dev/null || true
	fi
fi
# End automatically added section
# Automatically added by dh_installsystemd
if [ "$1" = "configure" ] || [ "$1" = "abort-upgrade" ] || [ "$1" = "abort-deconfigure" ] || [ "$1" = "abort-remove" ] ; then
	if [ -d /run/systemd/system ]; then
		systemctl --system daemon-reload >/dev/null || true
		if [ -n "$2" ]; then
			_dh_action=restart
		else
			_dh_action=start
		fi
		deb-systemd-invoke $_dh_action '{UNIT}' >/dev/null || true
	fi
fi
# End automatically added section
"#
    )
}

fn prerm() -> String {
    format!(
        r#"#!/bin/sh
set -e

# Automatically added by dh_installsystemd
if [ -d /run/systemd/system ] && [ "$1" = remove ]; then
	deb-systemd-invoke stop '{UNIT}' >/dev/null || true
fi
# End automatically added section
"#
    )
}

fn postrm() -> String {
    let overrides: String = STAT_OVERRIDES
        .iter()
        .map(|(_, _, _, path)| {
            format!(
                "\tif dpkg-statoverride --list '{path}' >/dev/null; then\n\
                 \t\tdpkg-statoverride --remove '{path}'\n\
                 \tfi\n"
            )
        })
        .collect();
    format!(
        r#"#!/bin/sh
set -e

if [ "$1" = "purge" ]; then
	# Logs and state go with the package; the system user stays (as Debian's packages leave
	# theirs), so files it owns elsewhere never fall to a reused uid.
	rm -rf /var/log/gatewayd /var/lib/gatewayd
{overrides}	rmdir /etc/gatewayd 2>/dev/null || true
fi

# Automatically added by dh_installsystemd
if [ "$1" = remove ] && [ -d /run/systemd/system ] ; then
	systemctl --system daemon-reload >/dev/null || true
fi
# End automatically added section
# Automatically added by dh_installsystemd
if [ "$1" = "remove" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper mask '{UNIT}' >/dev/null || true
	fi
fi

if [ "$1" = "purge" ]; then
	if [ -x "/usr/bin/deb-systemd-helper" ]; then
		deb-systemd-helper purge '{UNIT}' >/dev/null || true
		deb-systemd-helper unmask '{UNIT}' >/dev/null || true
	fi
fi
# End automatically added section
"#
    )
}
