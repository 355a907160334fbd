# The generators of ../../heart_rates_generators/ scored again by 0.3.8's two shape judges: that folder's run.sh, run by
# 0.3.8 over its cached victims (scoring only, a few minutes on 2 cores), from the folder holding gen_shapes1500/ and
# gen_bundled1500/.
exec bash "$(dirname "$0")/../../heart_rates_generators/run.sh" "$@"
