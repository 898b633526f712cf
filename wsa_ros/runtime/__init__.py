"""What a robot needs at run time, ROS-free and without torch: the bundle format, the ONNX
Runtime engine and its graph rewrites, message buffers to arrays, the observation rule,
the safety logic and the agent core that ties them together (``agent_core``)."""
