# bash completion for st-list, st-scales, st-dequant, st-pack, st-convert.
# Installed once per command name (bash-completion loads completions/NAME).

_st_tools_options() {
  case $1 in
    st-list) echo "-h --help -V --version -q --quiet -t --table --json --include --exclude --sha256 --expect-sha256 -f --force" ;;
    st-scales) echo "-h --help -V --version -q --quiet --json --report -f --force --block --convention --u8-as --strict --keep-scales" ;;
    st-dequant) echo "-h --help -V --version -q --quiet --to -f --force --block --convention --u8-as --strict --keep-scales" ;;
    st-pack) echo "-h --help -V --version -q --quiet -f --force --no-verify --strip-prefix --add-prefix --shard-size --keep-sharding --no-copy --progress --no-progress" ;;
    st-convert) echo "-h --help -V --version -q --quiet --to -f --force --no-verify --strip-prefix --add-prefix --shard-size --keep-sharding --no-copy --progress --no-progress -n --dry-run --block --convention --u8-as --strict --keep-scales" ;;
  esac
}

_st_tools() {
  local cur prev cmd
  cur=${COMP_WORDS[COMP_CWORD]}
  prev=${COMP_WORDS[COMP_CWORD-1]}
  cmd=${COMP_WORDS[0]##*/}
  case $prev in
    --to) COMPREPLY=($(compgen -W "bf16 f16 f32" -- "$cur")); return ;;
    --convention) COMPREPLY=($(compgen -W "weight_scale_inv weight_scale scale_weight qscale_weight scale torchao" -- "$cur")); return ;;
    --u8-as) COMPREPLY=($(compgen -W "e4m3fn e5m2 e4m3fnuz e5m2fnuz" -- "$cur")); return ;;
    --block) COMPREPLY=($(compgen -W "128x128 64x64 1x32 1x128" -- "$cur")); return ;;
    --shard-size) COMPREPLY=($(compgen -W "5GB 10GB 2GB 500MB" -- "$cur")); return ;;
    --include | --exclude | --expect-sha256 | --strip-prefix | --add-prefix) return ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$(_st_tools_options "$cmd")" -- "$cur"))
  else
    # FILE arguments: safetensors files, indexes and folders (st-pack/st-convert OUT may be new).
    COMPREPLY=($(compgen -f -X '!*.safetensors' -- "$cur") $(compgen -f -X '!*.index.json' -- "$cur") $(compgen -d -- "$cur"))
  fi
}

complete -o filenames -F _st_tools st-list st-scales st-dequant st-pack st-convert
