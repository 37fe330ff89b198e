# Sourced by the scripts: where a development host lives.
#   ADD_TURBO_HOST   0.3.75 (default: ComfyUI from PyPI), 0.33.0 (upstream tree, see build_host.sh),
#                    or any name for the checkout in COMFYUI_DIR ("custom" when unset)
#   ADD_TURBO_HOME   cache root (~/.cache/add-turbo); each host gets hosts/<name>/{venv,ComfyUI,base,stubs}
home="${ADD_TURBO_HOME:-$HOME/.cache/add-turbo}"
if [ -n "${COMFYUI_DIR:-}" ]; then
  host="${ADD_TURBO_HOST:-custom}"
else
  host="${ADD_TURBO_HOST:-0.3.75}"
fi
root="$home/hosts/$host"
