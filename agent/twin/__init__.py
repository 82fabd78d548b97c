"""The control plane: what the cloud may ask of the agent (desired state, methods, reported state).

`control.ControlPlane` with one channel per transport (`iothub`, `mqtt`, `local`), every document
through `guard`, every property through `desired.DesiredState`. Sinks never import from here.
"""
