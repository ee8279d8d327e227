# stackboot boot core: manifests (docs/PROTOCOL.md "Manifest").

# sb_stack_id MANIFEST: prints the stack id (sha256 of the manifest bytes).
sb_stack_id() { sb_sha256 "$1"; }

# sb_manifest_layers MANIFEST: prints "<sha256> <bytes> <name>" per layer, bottom
# first. Fails (with SB_MANIFEST_WHY) where the TypeScript reader refuses the manifest
# too (test/protocol/vectors/manifest): a bad magic, a line that is not "key value", a
# malformed layer line, a missing name, version, compatible or created, or no layers.
# The kernel, initrd, fdt and verity lines are checked where they are used.
sb_manifest_layers() {
	local f="$1" first=1 line k v a b c n=0 h has_name= has_version= has_compatible= has_created=
	SB_MANIFEST_WHY=
	[ -r "$f" ] || {
		SB_MANIFEST_WHY="manifest $f missing"
		return 1
	}
	# a last line without a newline still counts (the TypeScript reader takes it)
	while IFS= read -r line || [ -n "$line" ]; do
		if [ "$first" = 1 ]; then
			first=0
			[ "$line" = "stackboot-manifest 1" ] || {
				SB_MANIFEST_WHY="manifest $f: bad magic"
				return 1
			}
			continue
		fi
		# "key value": a key, one space, the value (a blank line is not one)
		case "$line" in
		' '*) k= ;;
		*' '*) k=${line%% *} v=${line#* } ;;
		*) k= ;;
		esac
		[ -n "$k" ] || {
			SB_MANIFEST_WHY="manifest $f: a line that is not \"key value\""
			return 1
		}
		case "$k" in
		name) [ -n "$v" ] && has_name=1 || has_name= ;;
		version) [ -n "$v" ] && has_version=1 || has_version= ;;
		compatible) [ -n "$v" ] && has_compatible=1 || has_compatible= ;;
		created)
			sb_is_uint "$v" || {
				SB_MANIFEST_WHY="manifest $f: created must be an integer"
				return 1
			}
			has_created=1 ;;
		esac
		[ "$k" = layer ] || continue
		# exactly "sha256:<hex> <bytes> <name>": two single spaces
		a= b= c=
		case "$v" in
		*' '*' '*' '* | ' '* | *' ') ;;
		*' '*' '*)
			a=${v%% *} c=${v#* }
			b=${c%% *} c=${c#* } ;;
		esac
		h=${a#sha256:}
		if [ "$h" = "$a" ] || ! sb_is_hex64 "$h" || ! sb_is_uint "$b"; then
			SB_MANIFEST_WHY="manifest $f: malformed layer line"
			return 1
		fi
		# 03000 is 3000 bytes, as the TypeScript reader takes it: sb_verify_layers compares
		# the size as a string with wc -c (leading zeros made a good layer "the wrong size")
		while :; do case "$b" in 0?*) b=${b#0} ;; *) break ;; esac; done
		case "$c" in '' | *[!A-Za-z0-9._-]*)
			SB_MANIFEST_WHY="manifest $f: bad layer name"
			return 1
			;;
		esac
		[ ${#c} -le 64 ] || {
			SB_MANIFEST_WHY="manifest $f: layer name longer than 64"
			return 1
		}
		printf '%s %s %s\n' "$h" "$b" "$c"
		n=$((n + 1))
	done <"$f"
	[ "$first" = 0 ] || {
		SB_MANIFEST_WHY="manifest $f: bad magic"
		return 1
	}
	for k in name version compatible created; do
		eval "v=\${has_$k}"
		[ -n "$v" ] || {
			SB_MANIFEST_WHY="manifest $f: missing \"$k\""
			return 1
		}
	done
	[ "$n" -gt 0 ] || {
		SB_MANIFEST_WHY="manifest $f: no layers"
		return 1
	}
	return 0
}

# sb_manifest_get MANIFEST KEY: prints the value of the first KEY line.
sb_manifest_get() {
	local k v
	[ -r "$1" ] || return 1
	while read -r k v || [ -n "$k" ]; do
		[ "$k" = "$2" ] && {
			printf '%s\n' "$v"
			return 0
		}
	done <"$1"
	return 1
}
