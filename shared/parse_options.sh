#!/usr/bin/env bash
# Turns "--some-name value" (or "--some-name=value") into some_name=value for every variable the calling
# script has already defined; "--help" prints the variables and their defaults. Source it after the defaults:
#   stage=0; hours=3; . shared/parse_options.sh || exit 1
# Unknown options are an error, so a typo never silently falls back to a default.

__anyphone_usage() {
  echo "Usage: $0 [options] [args]"
  echo "Options (current values):"
  local name
  for name in $__anyphone_known_vars; do
    echo "  --${name//_/-} ${!name}"
  done
}

# The script's options are its lower-case, non-exported shell variables defined before we were sourced
# (environment variables such as PATH or HOME are never options).
__anyphone_known_vars=$(comm -23 <(compgen -v | grep -E '^[a-z][a-z0-9_]*$' | sort) <(compgen -e | sort) | tr '\n' ' ')

while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h)
      __anyphone_usage
      exit 0 ;;
    --*=*)
      __name="${1%%=*}"; __name="${__name#--}"; __name="${__name//-/_}"
      __value="${1#*=}"
      shift ;;
    --*)
      __name="${1#--}"; __name="${__name//-/_}"
      if [ $# -lt 2 ]; then
        echo "$0: option $1 needs a value" >&2
        exit 1
      fi
      __value="$2"
      shift 2 ;;
    *)
      break ;;
  esac
  if [[ " $__anyphone_known_vars " != *" $__name "* ]]; then
    echo "$0: unknown option --${__name//_/-} (see $0 --help)" >&2
    exit 1
  fi
  printf -v "$__name" '%s' "$__value"
done
unset __name __value
true
