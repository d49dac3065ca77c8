# Where mount-helpers/install puts each file, and so where uninstall looks.
# Sourced by both; DESTDIR prefixes every path (packaging, tests).
D=${DESTDIR:-}
HELPER=$D/sbin/mount.strata                 # mount(8) looks in /sbin
UNITS=$D/etc/systemd/system
UNIT_FILES="strata@.service strata-snapshot@.service strata-snapshot@.timer"
SHARE=$D/usr/local/share
BASH_COMPLETION=$SHARE/bash-completion/completions/strata
ZSH_COMPLETION=$SHARE/zsh/site-functions/_strata
FISH_COMPLETION=$SHARE/fish/vendor_completions.d/strata.fish
MAN1=$SHARE/man/man1
