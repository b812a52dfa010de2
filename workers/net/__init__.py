"""Networking on the host: bridge, netns, veth endpoint over rtnetlink, port mappings
(iptables), the container's /etc/hosts and resolv.conf."""
