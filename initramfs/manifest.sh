# stackboot boot core: manifests (docs/PROTOCOL.md "Manifest").

# sb_stack_id MANIFEST: prints the stack id (sha256 of the manifest bytes).
sb_stack_id() { sb_sha256 "$1"; }

# sb_manifest_layers MANIFEST: prints "<sha256> <bytes> <name>" per layer, bottom
# first. Fails (with SB_MANIFEST_WHY) on a bad magic, a malformed layer line or no layers.
sb_manifest_layers() {
	local f="$1" first=1 k a b c n=0 h
	SB_MANIFEST_WHY=
	[ -r "$f" ] || {
		SB_MANIFEST_WHY="manifest $f missing"
		return 1
	}
	# a last line without a newline still counts (the TypeScript reader takes it)
	while read -r k a b c || [ -n "$k" ]; do
		if [ "$first" = 1 ]; then
			first=0
			[ "$k $a" = "stackboot-manifest 1" ] || {
				SB_MANIFEST_WHY="manifest $f: bad magic"
				return 1
			}
			continue
		fi
		[ "$k" = layer ] || continue
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
		printf '%s %s %s\n' "$h" "$b" "$c"
		n=$((n + 1))
	done <"$f"
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
