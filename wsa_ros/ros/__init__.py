"""The only code that imports rclpy: parameters, the control loop, message conversion, one
``main()`` for every node, and the nodes themselves, each wiring topics, parameters and
services to a ROS-free core object."""
